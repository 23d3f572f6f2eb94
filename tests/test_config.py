"""Configs: every file in configs/ loads; overrides, unknown keys and wrong types are clear errors."""
from pathlib import Path

import pytest
from pydantic import BaseModel

from pipelines.config import Config, ConfigError, load_config

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


def test_there_are_configs():
    names = {p.name for p in CONFIGS}
    assert {"demo.yaml", "self_instruct.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    assert cfg.output_dir and cfg.model


def test_demo_overrides_from_the_issue(tmp_path):
    cfg = load_config("configs/demo.yaml", [f"seed_file={tmp_path}/s.jsonl", f"output_dir={tmp_path}/run",
                                            "generate.rounds=2", "engine.batch_size=8", "train.lr=0.001"])
    assert cfg.seed_file == f"{tmp_path}/s.jsonl"
    assert cfg.output_dir == f"{tmp_path}/run"
    assert cfg.generate.rounds == 2 and cfg.engine.batch_size == 8 and cfg.train.lr == 0.001


def test_unknown_key_names_it():
    with pytest.raises(ConfigError, match=r"generate\.roundz: unknown key"):
        load_config("configs/demo.yaml", ["generate.roundz=3"])


def test_wrong_type_names_key_and_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("generate:\n  rounds: many\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: generate\.rounds: .*integer"):
        load_config(p)


def test_not_a_mapping_and_missing_file(tmp_path):
    p = tmp_path / "list.yaml"
    p.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(p)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml")


def _fields(model: type[BaseModel], prefix=""):
    for name, f in model.model_fields.items():
        yield prefix + name, f
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _fields(ann, prefix + name + ".")


def test_every_field_has_a_description():
    missing = [k for k, f in _fields(Config) if not (f.description or "").strip()]
    assert missing == []


def test_repeated_methods_get_their_own_stage_and_self_instruct_only_once():
    from pipelines.methods import stage_names

    assert stage_names(["self_instruct", "evol_instruct", "orca", "evol_instruct"]) == \
        ["self_instruct", "evol_instruct", "orca", "evol_instruct-2"]
    with pytest.raises(ConfigError, match=r"generate\.methods: .*self_instruct may appear once"):
        load_config(None, ["generate.methods=[self_instruct, self_instruct]"])
