"""`ifedit serve`: OpenAI's image-edit API over HTTP, in one process or on Ray Serve replicas.

Data flows one way: `form` turns a multipart request into an `EditRequest` (the CLI's own option parser checks the
settings), a backend runs it on a `replica.EditReplica` (the same `Editor` the CLI and the web page use), and `app`
answers in OpenAI's shapes. FastAPI, uvicorn and (for replicas) Ray are imported only by `ifedit serve`.
"""
