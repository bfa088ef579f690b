"""A server that nnInteractive's remote client (nninteractive-client 2.6.0) and the viewers built on it talk to:
`python -m inference.server`. wire.py is the protocol, inputs.py checks what a client sends, session.py is one
client's object being segmented, leases.py who holds which session, capabilities.py what the model answers,
app.py the HTTP endpoints, __main__.py the command line."""
