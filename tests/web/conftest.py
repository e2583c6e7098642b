"""Browser tests of the dashboard: Debian's Chromium driven by Playwright (sync API) against
the real app served by uvicorn in a thread, on a SQLite database of the test's own.

Fixtures: `chromium_executable`, `browser` (one per test module: the sync API keeps its event
loop marked running in the test thread, which would break the async tests of other modules
run by the same worker; for the same reason a module using `browser` has no async tests),
`dashboard` (settings changed per test by parametrizing `dashboard_settings_update` or
`dashboard_scheme`), `pages` and `page_for(tenant, role)` (signed-in pages; screenshots saved
to $AGENTMILL_TEST_ARTIFACTS or .artifacts/screenshots; a CSP violation or an uncaught script
error on any of them fails the test).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from agentmill.settings import Settings
from tests.servers import free_port
from tests.web.web_client import web  # noqa: F401  # pyright: ignore[reportUnusedImport] - the in-process fixture

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Playwright

    from tests.web.browser import DashboardServer, Pages

REPO = Path(__file__).resolve().parents[2]
TENANTS = ("acme", "globex")
ROLES = ("viewer", "operator", "admin")


def _find_chromium() -> str | None:
    configured = os.environ.get("AGENTMILL_TEST_CHROMIUM")
    if configured:
        return configured if Path(configured).is_file() else None
    if Path("/usr/bin/chromium").is_file():
        return "/usr/bin/chromium"
    return shutil.which("chromium")


def _unavailable(reason: str) -> None:
    """Skip, or fail in CI (.ci/run installs Chromium: a skip there would hide a failure)."""
    if os.environ.get("CI"):
        pytest.fail(f"browser tests are required in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def chromium_executable() -> str:
    found = _find_chromium()
    if found is None:
        _unavailable("no Chromium: apt-get install chromium (or set AGENTMILL_TEST_CHROMIUM)")
    try:
        import playwright.sync_api  # noqa: F401  # pyright: ignore[reportUnusedImport]
    except ImportError:
        _unavailable("playwright is not installed: pip install -e '.[dev]'")
    assert found is not None
    return found


@pytest.fixture(scope="module")
def playwright_driver(chromium_executable: str) -> Iterator[Playwright]:
    from playwright.sync_api import sync_playwright

    driver = sync_playwright().start()
    yield driver
    driver.stop()


@pytest.fixture(scope="module")
def browser(playwright_driver: Playwright, chromium_executable: str) -> Iterator[Browser]:
    """Headless Chromium, one per test module; no sandbox as root (it refuses to start)."""
    from playwright.sync_api import expect

    expect.set_options(timeout=15_000)  # as the contexts' default: a busy machine is slow
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    launched = playwright_driver.chromium.launch(
        executable_path=chromium_executable, headless=True, args=args
    )
    yield launched
    launched.close()


@pytest.fixture
def dashboard_settings_update() -> dict[str, Any]:
    """Settings of the test's dashboard changed from the defaults (parametrize to change)."""
    return {}


@pytest.fixture
def dashboard_scheme() -> str:
    """ "http", or "https" with a self-signed certificate (parametrize to change)."""
    return "http"


@pytest.fixture
def dashboard(
    sqlite_settings: Settings,
    tmp_path: Path,
    dashboard_settings_update: dict[str, Any],
    dashboard_scheme: str,
    browser: Browser,
) -> Iterator[DashboardServer]:
    """The app (engine with 4 workers, the workflows of browser.PROJECT, scripted models)
    served on 127.0.0.1; keys for each of TENANTS x ROLES in `.keys[(tenant, role)]`."""
    from agentmill.agents.models import override_models
    from agentmill.server.app import create_app
    from agentmill.spec.loader import load_project_text
    from agentmill.web import OneTimeToken
    from tests.fakes import ScriptedModel
    from tests.web.browser import (
        PROJECT,
        TOOL_MODEL_LABEL,
        TOOLS_MODULE,
        DashboardServer,
        ToolModel,
    )

    update = {"rate_limit": 1000.0, "rate_burst": 1000} | dashboard_settings_update
    settings = sqlite_settings.model_copy(update=update)
    module = f"dashboard_tools_{uuid.uuid4().hex}"  # Python keeps modules imported before
    (tmp_path / f"{module}.py").write_text(TOOLS_MODULE)
    config = tmp_path / "agentmill.yaml"
    config.write_text(PROJECT.replace("{module}", module))
    project = load_project_text(config.read_text(), str(config))
    ui_token = OneTimeToken()
    app = create_app(settings, project=project, config_path=config, workers=4, ui_token=ui_token)
    server = DashboardServer(app=app, port=free_port(), model=ScriptedModel(), tools=ToolModel())
    server.ui_token = ui_token.value
    if dashboard_scheme == "https":
        server.scheme, server.ssl = "https", _certificate(tmp_path)

    def resolve(label: str) -> Any:
        return server.tools.model() if label == TOOL_MODEL_LABEL else server.model.model(label)

    with override_models(resolve):
        server.start()
        try:
            server.create_keys(TENANTS, ROLES)
            yield server
        finally:
            server.stop()


def _certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (the browser is told to accept it)."""
    certificate, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(certificate)],
        check=True, capture_output=True,
    )  # fmt: skip
    return certificate, key


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    configured = os.environ.get("AGENTMILL_TEST_ARTIFACTS")
    return Path(configured) if configured else REPO / ".artifacts" / "screenshots"


@pytest.fixture
def pages(
    browser: Browser,
    dashboard: DashboardServer,
    artifacts_dir: Path,
    request: pytest.FixtureRequest,
) -> Iterator[Pages]:
    """Pages of fresh browser contexts against `dashboard`; at the end, screenshots saved and
    the test failed by any CSP violation or uncaught script error they reported."""
    from tests.web.browser import Pages

    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid.split("/")[-1]).strip("_")
    opened = Pages(browser, dashboard.url, dashboard.keys, artifacts_dir, name)
    yield opened
    problems = opened.close()
    if problems:
        pytest.fail("the browser reported:\n" + "\n".join(problems))


@pytest.fixture
def page_for(pages: Pages) -> Callable[..., Page]:
    """`page_for(tenant, role)`: a new page signed in through the login form."""
    return pages.signed_in
