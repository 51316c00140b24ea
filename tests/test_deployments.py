"""The deployments through a real Prefect server and a real process worker, run from the CLI."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from deployments.local.stack import LocalStack, run_deployment


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalStack, dict[str, str]]]:
    state = tmp_path_factory.mktemp("deployed")
    with LocalStack(state) as stack:
        assert stack.prefect is not None
        env = stack.env()
        stack.prefect.deploy(env)
        worker = stack.prefect.start_worker(env, state / "logs")
        try:
            yield stack, env
        finally:
            worker.stop()


def test_provision_and_verify_run_through_the_worker(deployed: tuple[LocalStack, dict[str, str]]) -> None:
    _, env = deployed
    provision = run_deployment("provision-feeds/on-demand", env)
    assert provision.returncode == 0, provision.stdout[-2000:] + provision.stderr[-2000:]
    verify = run_deployment("verify-feeds/daily", env, {"feeds": ["cloudtrail", "eks-control-plane"]})
    assert verify.returncode == 0 and "Completed" in verify.stdout, verify.stdout[-2000:]
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True, httpx_settings={"base_url": env["PREFECT_API_URL"]}) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["verify-feeds"])))
    assert artifacts and artifacts[0].type == "table"


def test_a_failing_run_exits_non_zero(deployed: tuple[LocalStack, dict[str, str]]) -> None:
    stack, env = deployed
    stack.aws.client("cloudtrail").stop_logging(Name="cloud-platform-cloudtrail")
    verify = run_deployment("verify-feeds/daily", env, {"feeds": ["cloudtrail"]})
    assert verify.returncode == 1 and "Failed" in verify.stdout


def test_a_wrongly_typed_parameter_is_refused_with_the_schema_message(
        deployed: tuple[LocalStack, dict[str, str]]) -> None:
    _, env = deployed
    answer = run_deployment("verify-feeds/daily", env, {"feeds": "cloudtrail"})
    assert answer.returncode != 0
    assert "Validation failed for field 'feeds'" in answer.stdout + answer.stderr


def test_every_deployment_exists_with_its_schedule(deployed: tuple[LocalStack, dict[str, str]]) -> None:
    _, env = deployed
    import subprocess
    import sys

    listing = subprocess.run([sys.executable, "-m", "prefect", "deployment", "ls"], env={**__import__("os").environ,
                             **env}, capture_output=True, text=True, timeout=60, check=True,
                             cwd=Path(__file__).resolve().parents[1]).stdout
    for name in ("provision-feeds/on-demand", "verify-feeds/daily", "feed-canary/daily", "rotate-reader-keys/weekly",
                 "rotate-reader-keys/on-demand"):
        assert name in listing


@pytest.mark.parametrize(("pool_type", "template"), [("ecs", "ecs.json"), ("kubernetes", "kubernetes.json")])
def test_scale_out_work_pool_templates_are_accepted(deployed: tuple[LocalStack, dict[str, str]], pool_type: str,
                                                   template: str) -> None:
    """The shipped ECS and Kubernetes job templates create pools on a real server (nothing runs there)."""
    import json
    import subprocess
    import sys

    _, env = deployed
    root = Path(__file__).resolve().parents[1]
    path = root / "deployments" / "work-pools" / template
    pool = f"socfeeds-{pool_type}"
    run_env = {**__import__("os").environ, **env}
    subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "work-pool", "create", pool, "--type", pool_type,
                    "--base-job-template", str(path), "--overwrite"], env=run_env, capture_output=True, text=True,
                   timeout=120, check=True, cwd=root)
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True, httpx_settings={"base_url": env["PREFECT_API_URL"]}) as client:
        created = client.read_work_pool(pool)
    assert created.type == pool_type
    assert created.base_job_template == json.loads(path.read_text())
    defaults = created.base_job_template["variables"]["properties"]
    assert defaults["env"]["default"]["SOCFEEDS_SETTINGS_FILE"].endswith("socfeeds.toml")
