"""The host's own `alembic revision --autogenerate` leaves our tables alone."""

from __future__ import annotations

from pathlib import Path

from alembic import command

from chat_storage import migrations
from tests.host_app.conftest import HOST_MIGRATIONS, copy_host_env, host_config

HELPER_LINES = {
    "        include_name=include_name,\n": "",
    "        include_object=include_object,\n": "",
}


def autogenerate(url: str, script_location: Path) -> str:
    """Run the host's autogenerate against ``url`` and return the revision it wrote."""
    versions = script_location / "versions"
    before = set(versions.glob("*.py"))
    command.revision(host_config(url, script_location), message="no change", autogenerate=True)
    (written,) = set(versions.glob("*.py")) - before
    return written.read_text()


def both_histories_at_head(url: str) -> None:
    command.upgrade(host_config(url), "head")
    migrations.upgrade(url)


def test_autogenerate_proposes_nothing(blank_database_url: str, tmp_path: Path) -> None:
    """With the helpers in env.py, no model changed: an empty revision."""
    both_histories_at_head(blank_database_url)
    script_location = copy_host_env(tmp_path, {})
    revision = autogenerate(blank_database_url, script_location)
    assert "op." not in revision, revision


def test_autogenerate_without_helpers_drops_our_tables(
    blank_database_url: str, tmp_path: Path
) -> None:
    """Without the helpers the host's autogenerate would drop every conversation."""
    both_histories_at_head(blank_database_url)
    script_location = copy_host_env(tmp_path, HELPER_LINES)
    revision = autogenerate(blank_database_url, script_location)
    for table in ("messages", "conversations", "chat_storage_alembic_version"):
        assert f"op.drop_table('{table}')" in revision


def test_autogenerate_with_both_metadata_collections(
    blank_database_url: str, tmp_path: Path
) -> None:
    """target_metadata=[SQLModel.metadata, Base.metadata]: no duplicate users, nothing proposed."""
    both_histories_at_head(blank_database_url)
    script_location = copy_host_env(
        tmp_path,
        {
            "target_metadata = SQLModel.metadata\n": (
                "from chat_storage import Base\n\n"
                "target_metadata = [SQLModel.metadata, Base.metadata]\n"
            )
        },
    )
    revision = autogenerate(blank_database_url, script_location)
    assert "op." not in revision, revision


def test_host_env_is_the_documented_one() -> None:
    """The env.py these tests run holds the lines docs/host-application.md tells hosts to add."""
    env = (HOST_MIGRATIONS / "env.py").read_text()
    doc = (Path(__file__).resolve().parents[2] / "docs" / "host-application.md").read_text()
    for line in (
        "from chat_storage.host import include_name, include_object",
        "include_name=include_name,",
        "include_object=include_object,",
    ):
        assert line in env
        assert line in doc
