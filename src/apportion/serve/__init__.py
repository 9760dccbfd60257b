"""The gateway: ``apportion serve``, its budget API and the OpenAI-compatible proxy."""
