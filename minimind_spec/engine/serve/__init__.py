"""Talking to a trained model: the continuous-batching scheduler, the OpenAI-compatible HTTP API
with its chat page, and the terminal chat. `model` loads what is served and renders prompts;
`text` turns tokens into what a client sees; `scheduler` runs the requests; `api` and `chat`
are the two front ends."""
