"""SmartConfig: validation with actionable messages, save/load round trip, command-line parsing."""

import dataclasses
import json
import logging

import pytest
from transformers import HfArgumentParser

import smart_hf
from smart_hf.config import SmartConfig
from smart_hf.constants import CONFIG_NAME

# (kwargs, a fragment of the message that names the fix)
INVALID = [
    ({"sparsity": -0.1}, "sparsity must be in [0, 1)"),
    ({"sparsity": 1.0}, "e.g. 0.5"),
    ({"sparsity": 1.5}, "sparsity must be in [0, 1)"),
    ({"sparsity": float("nan")}, "sparsity must be in [0, 1)"),
    ({"pattern": "nm", "n": 4, "m": 4}, "1 <= n < m"),
    ({"pattern": "nm", "n": 5, "m": 4}, "e.g. n=2, m=4"),
    ({"pattern": "nm", "n": 0, "m": 4}, "1 <= n < m"),
    ({"pattern": "nm", "n": 2, "m": 0}, "1 <= n < m"),
    ({"pattern": "nm", "n": 2, "m": 4, "sparsity": 0.75}, "drop `sparsity` or change n/m"),
    ({"pattern": "nm", "n": 1, "m": 4, "sparsity": 0.5}, "1 - n/m = 0.75"),
    ({"block_shape": [0, 4]}, "two positive ints"),
    ({"block_shape": [4, -1]}, "e.g. [4, 4]"),
    ({"block_shape": [4]}, "two positive ints"),
    ({"block_shape": [2, 2, 2]}, "two positive ints"),
    ({"pattern": "row"}, "choose one of ['block', 'channel', 'nm', 'coupled']"),
    ({"budget": "local"}, "choose one of ['global', 'layer']"),
    ({"score_init": "random"}, "choose one of ['magnitude', 'activation', 'fisher', 'constant']"),
    ({"pattern": "block", "score_init": "fisher"}, "use pattern='coupled'"),
    ({"temperature_schedule": "step"}, "choose one of"),
    ({"tau_start": 1e-4, "tau_end": 1.0}, "swap them or lower tau_end"),
    ({"tau_start": 0.0}, "must be > 0"),
    ({"tau_end": -1.0}, "must be > 0"),
    ({"min_layer_density": 1.0}, "min_layer_density must be in [0, 1)"),
    ({"min_layer_density": -0.1}, "e.g. 0.05"),
    ({"score_noise": -1.0}, "score_noise must be >= 0"),
    ({"score_noise": 1.7e38}, "score_noise must be >= 0 and at most 1000"),  # overflowed the scores to inf
    ({"calibration_batches": 0}, "calibration_batches must be >= 1"),
    ({"dynamic_window": 0}, "dynamic_window >= 1"),
    ({"dynamic_cut": 1.0}, "0 < dynamic_cut < 1"),
    ({"dynamic_cut": 0.0}, "0 < dynamic_cut < 1"),
    ({"dynamic_jitter": -0.1}, "dynamic_jitter >= 0"),
    ({"dynamic_min_decrease": 1.0}, "dynamic_min_decrease must be in [0, 1)"),
    ({"dynamic_min_decrease": -0.5}, "e.g. 0.05"),
    ({"target_modules": ["q_proj"], "target_regex": ".*q_proj"}, "not both (combine them into one regex)"),
    ({"target_modules": []}, "leave it unset (None)"),
    ({"overrides": ["{not json"]}, "is not JSON"),
    ({"overrides": ['{"pattern": "nm"}']}, "needs a 'regex' key"),
    (
        {"overrides": [{"regex": ".*", "tau": 0.1}]},
        "allowed: ['block_shape', 'm', 'n', 'pattern', 'regex', 'sparsity']",
    ),
    ({"overrides": [{"regex": ".*fc1", "pattern": "diagonal"}]}, "choose one of"),
    ({"overrides": [{"regex": ".*fc1", "sparsity": 1.2}]}, "sparsity must be in [0, 1)"),
    ({"overrides": [{"regex": ".*fc1", "pattern": "nm", "n": 3, "m": 2}]}, "1 <= n < m"),
    ({"overrides": [{"regex": ".*fc1", "pattern": "nm", "sparsity": 0.3}]}, "drop `sparsity`"),
    ({"overrides": [{"regex": ".*fc1", "block_shape": [0, 2]}]}, "two positive ints"),
    ({"pattern": "coupled", "target_speedup": 1.0}, "target_speedup must be > 1"),
    ({"pattern": "coupled", "target_speedup": 0.5}, "e.g. 2.0 for twice as fast"),
    ({"pattern": "block", "target_speedup": 2.0}, "set pattern='coupled' or give a sparsity instead"),
    ({"pattern": "coupled", "target_speedup": 2.0, "sparsity": 0.5}, "not both; drop one of them"),
    ({"pattern": "coupled", "target_speedup": 2.0, "budget": "layer"}, "use budget='global'"),
    ({"pattern": "coupled", "target_speedup": 2.0, "latency_batch_size": 0}, "must be >= 1"),
    ({"pattern": "coupled", "width_multiple": 12}, "width_multiple must be one of [1, 8, 16, 32, 64]"),
    ({"pattern": "block", "width_multiple": 8}, "use pattern='coupled' or drop width_multiple"),
    ({"pattern": "nm", "overrides": [{"regex": ".*fc1", "sparsity": 0.9}]}, "pattern='nm' fixes sparsity"),
]


@pytest.mark.parametrize(("kwargs", "fix"), INVALID, ids=[str(k) for k, _ in INVALID])
def test_invalid_config_raises_value_error_naming_the_fix(kwargs, fix):
    with pytest.raises(ValueError) as info:
        SmartConfig(**kwargs)
    assert fix in str(info.value), str(info.value)


def test_an_invalid_override_is_named_in_the_error():
    """The top-level fields may be fine: the message says which override to fix (a random property-test draw found
    'pattern=... is not supported' with no word of the override it came from)."""
    with pytest.raises(ValueError, match=r"override \{'regex': '\.\*fc1', 'pattern': 'blk'\}: pattern='blk'"):
        SmartConfig(overrides=[{"regex": ".*fc1", "pattern": "blk"}])


def test_defaults_and_derived_sparsity():
    cfg = SmartConfig()
    assert (cfg.pattern, cfg.block_shape, cfg.budget, cfg.sparsity) == ("block", [4, 4], "global", 0.5)
    assert cfg.temperature_schedule == "dynamic"
    assert SmartConfig(pattern="nm").sparsity == 0.5
    assert SmartConfig(pattern="nm", n=1, m=4).sparsity == 0.75
    assert SmartConfig(pattern="nm", n=2, m=8, sparsity=0.75).sparsity == 0.75  # consistent: accepted
    assert SmartConfig(pattern="channel", sparsity=0.3).sparsity == 0.3


def test_override_resolution():
    cfg = SmartConfig(
        sparsity=0.6,
        overrides=['{"regex": ".*fc1", "pattern": "nm", "n": 1, "m": 4}', {"regex": ".*fc2", "block_shape": [2, 8]}],
    )
    assert cfg.overrides[0] == {"regex": ".*fc1", "pattern": "nm", "n": 1, "m": 4}  # JSON parsed to a dict
    nm = cfg.unit_settings(cfg.overrides[0])
    assert (nm.pattern, nm.n, nm.m, nm.sparsity) == ("nm", 1, 4, 0.75)  # N:M derives its own sparsity
    blocks = cfg.unit_settings(cfg.overrides[1])
    assert (blocks.pattern, blocks.block_shape, blocks.sparsity) == ("block", (2, 8), 0.6)
    top = cfg.unit_settings()
    assert (top.pattern, top.block_shape, top.sparsity) == ("block", (4, 4), 0.6)


def test_every_field_has_help():
    for f in dataclasses.fields(SmartConfig):
        assert f.metadata.get("help"), f"SmartConfig.{f.name} has no help metadata"
        assert len(f.metadata["help"]) > 15


def test_save_and_load_round_trip(tmp_path):
    cfg = SmartConfig(
        pattern="channel",
        sparsity=0.3,
        budget="layer",
        target_regex=r".*\.mlp\..*",
        exclude_modules=["fc2"],
        overrides=['{"regex": ".*fc1", "pattern": "nm"}'],
        temperature_schedule="cosine",
        tau_end=1e-3,
    )
    path = cfg.save_pretrained(tmp_path)
    assert path.endswith(CONFIG_NAME)
    payload = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert payload["smart_hf_version"] == smart_hf.__version__
    loaded = SmartConfig.from_pretrained(tmp_path)
    assert loaded == cfg
    assert SmartConfig.from_pretrained(path) == cfg  # the file itself works too


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(ValueError, match="pass the directory written by save_pretrained"):
        SmartConfig.from_pretrained(tmp_path)
    (tmp_path / CONFIG_NAME).write_text("{broken")
    with pytest.raises(ValueError, match="re-export it"):
        SmartConfig.from_pretrained(tmp_path)


def test_unknown_keys_warn_and_are_dropped(tmp_path, caplog):
    SmartConfig(sparsity=0.4).save_pretrained(tmp_path)
    payload = json.loads((tmp_path / CONFIG_NAME).read_text())
    payload["future_knob"] = 3
    payload["smart_hf_version"] = "99.0.0"
    (tmp_path / CONFIG_NAME).write_text(json.dumps(payload))
    with caplog.at_level(logging.WARNING, logger="smart_hf.config"):
        loaded = SmartConfig.from_pretrained(tmp_path)
    assert loaded.sparsity == 0.4 and not hasattr(loaded, "future_knob")
    text = caplog.text
    assert "future_knob" in text and "99.0.0" in text


def test_hf_argument_parser():
    parser = HfArgumentParser(SmartConfig)
    (nm,) = parser.parse_args_into_dataclasses(["--pattern", "nm", "--n", "2", "--m", "4"])
    assert (nm.pattern, nm.n, nm.m, nm.sparsity) == ("nm", 2, 4, 0.5)
    (blocks,) = parser.parse_args_into_dataclasses(["--block_shape", "2", "8", "--sparsity", "0.7"])
    assert blocks.block_shape == [2, 8] and blocks.sparsity == 0.7
    (full,) = parser.parse_args_into_dataclasses(
        [
            "--target_modules", "q_proj", "v_proj",
            "--overrides", '{"regex": ".*fc1", "pattern": "nm"}',
            "--temperature_schedule", "constant",
            "--tau_end", "1.0",
        ]
    )  # fmt: skip
    assert full.target_modules == ["q_proj", "v_proj"]
    assert full.overrides == [{"regex": ".*fc1", "pattern": "nm"}]
    assert full.temperature_schedule == "constant"
    with pytest.raises(SystemExit):  # argparse rejects choices outside the Literal
        parser.parse_args_into_dataclasses(["--pattern", "row"])
    with pytest.raises(ValueError, match="1 <= n < m"):
        parser.parse_args_into_dataclasses(["--pattern", "nm", "--n", "4", "--m", "4"])


def test_a_speed_target_replaces_the_sparsity_and_parses_and_round_trips(tmp_path):
    cfg = SmartConfig(pattern="coupled", target_speedup=2.0, latency_batch_size=8, latency_seq_len=64)
    assert cfg.sparsity is None and cfg.width_multiple is None  # the budget is solved at prepare
    cfg.save_pretrained(tmp_path)
    assert SmartConfig.from_pretrained(tmp_path) == cfg
    (parsed,) = HfArgumentParser(SmartConfig).parse_args_into_dataclasses(
        ["--pattern", "coupled", "--target_speedup", "1.5", "--width_multiple", "16"]
    )
    assert (parsed.target_speedup, parsed.width_multiple, parsed.sparsity) == (1.5, 16, None)
    assert SmartConfig(pattern="coupled").sparsity == 0.5  # without a target the FLOP budget's default stays
    with pytest.raises(TypeError, match="target_speedup must be a number"):
        SmartConfig(pattern="coupled", target_speedup="2x")
