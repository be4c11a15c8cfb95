"""The OpenAI-compatible HTTP API (``/v1/videos``), served by the Gateway beside gRPC.

* :mod:`.openai_videos`: the FastAPI app, its routes and how requests map onto Tessera jobs;
* :mod:`.objects`: the API's objects (Video, list, deleted, errors) and records turned into them;
* :mod:`.errors`: Tessera's errors as the API's HTTP statuses and ``{"error": {...}}`` bodies;
* :mod:`.spritesheet`: the contact sheet of a video's frames (``variant=spritesheet``).
"""
