from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import Field

from keel_core.config import load_file, load_text
from keel_core.errors import ConfigError
from keel_core.schemas import ImageDefinition, Schema

GOOD = """\
name: keel
version: "1.0"
packages: [openssh-server]
partitions:
  usr: 600
"""


def problems(text: str, model=ImageDefinition, filename: str = "images/keel.yaml") -> list[str]:
    with pytest.raises(ConfigError) as err:
        load_text(text, model, filename=filename)
    return [str(p) for p in err.value.problems]


def test_valid_definition_loads():
    image = load_text(GOOD, ImageDefinition)
    assert image.name == "keel"
    assert image.partitions.usr == 600
    assert image.partitions.root == 256  # default kept


def test_typo_key_names_file_line_column_and_suggests(tmp_path: Path):
    path = tmp_path / "keel.yaml"
    path.write_text(GOOD.replace("packages:", "packges:"))
    with pytest.raises(ConfigError) as err:
        load_file(path, ImageDefinition)
    assert str(err.value) == (
        f"{path}:3:1: packges: unknown key 'packges'; did you mean 'packages'?"
    )


def test_nested_typo_reports_dotted_path_and_position():
    text = GOOD.replace("  usr: 600", "  usr: 600\n  rot: 300")
    assert problems(text) == [
        "images/keel.yaml:6:3: partitions.rot: unknown key 'rot'; did you mean 'root'?"
    ]


def test_unknown_key_without_close_match_lists_known_keys():
    (msg,) = problems(GOOD + "zzz: 1\n")
    assert msg.startswith("images/keel.yaml:6:1: zzz: unknown key 'zzz'; known keys: ")
    assert "compression" in msg
    assert "packages" in msg


def test_wrong_type_points_at_the_value():
    (msg,) = problems(GOOD.replace("usr: 600", "usr: lots"))
    assert msg.startswith("images/keel.yaml:5:8: partitions.usr: Input should be a valid integer")
    assert "(got 'lots')" in msg


def test_bound_violation_says_what_was_expected():
    (msg,) = problems(GOOD.replace("usr: 600", "usr: 1"))
    assert msg == (
        "images/keel.yaml:5:8: partitions.usr: Input should be greater than or equal to 64 (got 1)"
    )


def test_list_item_errors_name_the_index():
    (msg,) = problems(GOOD.replace("[openssh-server]", "[openssh-server, {a: 1}]"))
    assert msg.startswith("images/keel.yaml:3:28: packages[1]: Input should be a valid string")


def test_missing_required_key():
    assert problems("version: '1'\n") == ["images/keel.yaml:1:1: name: missing required key 'name'"]


def test_every_problem_is_reported_at_once():
    text = GOOD.replace("packages:", "packges:").replace("usr: 600", "usr: x")
    assert len(problems(text)) == 2


def test_duplicate_keys_are_errors():
    (msg,) = problems(GOOD + "name: other\n")
    assert msg == "images/keel.yaml:6:1: name: duplicate key (first given on line 1)"


def test_yaml_syntax_error_has_position():
    (msg,) = problems("name: keel\nversion: [1, 2\n")
    assert msg.startswith("images/keel.yaml:3:1: invalid YAML:")


def test_json_is_accepted_with_positions():
    (msg,) = problems('{\n  "name": "keel",\n  "version": "1",\n  "sute": "trixie"\n}\n')
    assert msg == "images/keel.yaml:4:3: sute: unknown key 'sute'; did you mean 'suite'?"


def test_missing_file_is_a_config_error(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"nope.yaml:1:1: cannot read: No such file"):
        load_file(tmp_path / "nope.yaml", ImageDefinition)


def test_models_in_lists_and_dicts_get_suggestions():
    class Port(Schema):
        host: int
        container: int

    class App(Schema):
        ports: list[Port] = Field(default_factory=list)
        labels: dict[str, Port] = Field(default_factory=dict)

    text = (
        "ports:\n  - host: 1\n    contaner: 2\nlabels:\n  web: {host: 1, container: 2, hots: 3}\n"
    )
    assert problems(text, App, "app.yaml") == [
        "app.yaml:2:5: ports[0].container: missing required key 'container'",
        "app.yaml:3:5: ports[0].contaner: unknown key 'contaner'; did you mean 'container'?",
        "app.yaml:5:32: labels.web.hots: unknown key 'hots'; did you mean 'host'?",
    ]
