"""The OpenAI Realtime protocol (GA), with its beta dialect."""
