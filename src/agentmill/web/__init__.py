"""The dashboard: server-rendered pages over the same services as the REST API.

`install_dashboard(app)` adds its routes to the server's FastAPI app; `agentmill serve`
serves it at `/`, `agentmill ui` over the local store with a one-time sign-in link.
"""

from agentmill.web.app import install_dashboard
from agentmill.web.auth import OneTimeToken

__all__ = ["OneTimeToken", "install_dashboard"]
