"""GetSecretValue follows AWSCURRENT when a rotation moves it. Local stack only; moto 5.2.5.

moto answers GetSecretValue without a stage from the version the secret was last written with,
so after UpdateSecretVersionStage moves AWSCURRENT to a new version it still returns the old one,
and every consumer reading "the secret" keeps the old key. AWS returns the AWSCURRENT version;
so does this patch.
"""

from __future__ import annotations

from moto.secretsmanager.models import SecretsManagerBackend

_original = SecretsManagerBackend.update_secret_version_stage


def _update_secret_version_stage(self: SecretsManagerBackend, secret_id: str, version_stage: str,
                                 remove_from_version_id: str, move_to_version_id: str) -> tuple[str, str]:
    answer = _original(self, secret_id, version_stage, remove_from_version_id, move_to_version_id)
    if version_stage == "AWSCURRENT" and move_to_version_id:
        self.secrets[secret_id].default_version_id = move_to_version_id  # type: ignore[misc]
    return answer


def apply() -> None:
    SecretsManagerBackend.update_secret_version_stage = _update_secret_version_stage  # type: ignore[method-assign]
