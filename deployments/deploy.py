"""`make deploy`: prefect.yaml's deployments and the on-call alerts, to the server in PREFECT_API_URL.

One command for both, so a deployment never goes live without its alerts. The settings
(SOCFEEDS_SETTINGS_FILE / SOCFEEDS_*) are validated first: a bad value stops the deploy with the
field named. The work pool is not touched: create it once (README, Deployments).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from deployments.alerts import apply_alerts
from socfeeds.settings import Settings, load_settings

REPO_ROOT = Path(__file__).resolve().parents[1]


class DeployFailed(RuntimeError):
    """`prefect deploy` refused; the message carries its output."""


def deploy(settings: Settings) -> list[str]:
    answer = subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=300, check=False)
    if answer.returncode != 0:
        raise DeployFailed(f"prefect deploy --all failed:\n{answer.stdout[-2000:]}{answer.stderr[-2000:]}")
    return ["deployments: prefect.yaml applied", *apply_alerts(settings.alerts)]


def main() -> int:
    try:
        for line in deploy(load_settings()):
            print(line, flush=True)
    except (DeployFailed, ValueError) as error:
        print(f"deploy stopped: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
