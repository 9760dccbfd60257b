// Two agents of one request through the apportion gateway, with Node's own fetch.
// Usage: node two_agents.mjs BASE_URL API_KEY REQUEST_ID
const [base, key, requestId] = process.argv.slice(2);

async function call(agent, extra, body) {
  const response = await fetch(`${base}/chat/completions`, {
    method: "POST",
    headers: {
      "Authorization": `Bearer ${key}`,
      "Content-Type": "application/json",
      "Apportion-Request": requestId,
      "Apportion-Agent": agent,
      ...extra,
    },
    body: JSON.stringify({ model: "gpt-4o-mini", ...body }),
  });
  const headers = {};
  for (const [name, value] of response.headers) {
    if (name.startsWith("apportion-")) headers[name] = value;
  }
  return { status: response.status, headers, text: await response.text() };
}

const question = [{ role: "user", content: "Count for me, please." }];
const planner = await call("planner", { "Apportion-Ceiling": "2000" }, { messages: question });
const writer = await call("writer", {}, { messages: question, stream: true });
console.log(JSON.stringify({ planner, writer }));
