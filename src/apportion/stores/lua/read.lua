-- Store.get_with_features: a request's ledger and the first event of its list (its open,
-- whose note holds its features), read in one call. KEYS: ledger, events. Changes nothing.
return {redis.call('GET', KEYS[1]), redis.call('LINDEX', KEYS[2], 0)}
