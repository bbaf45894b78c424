"""The study config: typed, validated on load, every error naming the field, the value and what is allowed."""

import pathlib

import pytest

from repeatlab import config
from repeatlab.errors import ConfigError

CONFIGS = sorted((pathlib.Path(__file__).parent.parent / "pipelines" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = config.load(str(path))
    assert cfg.name == path.stem.removesuffix("-kubeflow")  # paper-small-kubeflow: paper-small's cluster variant
    assert 0.0 in cfg.grid.fractions, "every shipped study needs f = 0 baselines for N_eff"


def test_defaults_validate_and_round_trip_through_yaml():
    cfg = config.from_dict({"name": "x"})
    again = config.loads(cfg.to_yaml())
    assert again == cfg


def test_integral_floats_are_accepted_for_integers():
    # YAML 1e6 is a float; KFP's local runner turns ints inside dicts into floats
    cfg = config.from_dict({"budget": {"total_tokens": 1e6, "context": 128.0, "batch_tokens": 4096}})
    assert cfg.budget.total_tokens == 1_000_000 and isinstance(cfg.budget.context, int)


@pytest.mark.parametrize(
    "data,expected",
    [
        (
            {"grid": {"fractions": [0, 1.5]}},
            "grid.fractions[1]: 1.5 is not allowed: a repeated fraction must be in [0, 1)",
        ),
        ({"grid": {"fractions": [0, -0.1]}}, "grid.fractions[1]: -0.1 is not allowed"),
        ({"grid": {"epochs": [0.5]}}, "grid.epochs[0]: 0.5 is not allowed: repeated epochs E must be >= 1"),
        ({"grid": {"fractionz": [0]}}, "grid.fractionz: unknown field; allowed fields here:"),
        (
            {"budget": {"context": 100, "batch_tokens": 150}},
            "budget.batch_tokens: 150 is not allowed: a positive multiple",
        ),
        ({"budget": {"total_tokens": "many"}}, "budget.total_tokens: 'many' is not allowed: expected an integer"),
        ({"budget": {"context": 12.5}}, "budget.context: 12.5 is not allowed: expected an integer"),
        ({"corpus": {"tokenizer": "word"}}, "corpus.tokenizer: 'word' is not allowed: expected one of 'byte', 'bpe'"),
        ({"corpus": {"vocab_size": 1000}}, "corpus.vocab_size: 1000 is not allowed: 256 for the byte tokenizer"),
        ({"corpus": {"tokenizer": "bpe", "vocab_size": 100}}, "corpus.vocab_size: 100 is not allowed: between 512"),
        ({"models": [{"n_layer": 2, "n_embd": 65, "n_head": 4}]}, "models[0].n_embd: 65 is not allowed"),
        ({"models": [{"n_layer": 2}]}, "models[0]: "),
        ({"models": [{"n_layer": 2, "n_embd": 64, "n_head": 4, "target_params": 1e5}]}, "models[0].target_params"),
        ({"models": []}, "models: [] is not allowed: at least one model"),
        ({"models": [{"target_params": 1e5, "fractions": [0.3]}]}, "models[0].fractions[0]: 0.3 is not allowed"),
        ({"train": {"nproc_per_node": 0}}, "train.nproc_per_node: 0 is not allowed"),
        ({"train": {"nproc_per_node": 3}}, "must divide evenly over 3 ranks"),
        ({"train": {"micro_batch_sequences": 5}}, "train.micro_batch_sequences: 5 is not allowed"),
        ({"train": {"dtype": "fp8"}}, "train.dtype: 'fp8' is not allowed"),
        ({"name": "My Study"}, "name: 'My Study' is not allowed"),
        ({"storage": {"options": {"s3": {"secret": "abc"}}}}, "storage.options.s3.secret"),
        (
            {"eval": {"prefix_random_tokens": 60, "prefix_repeats": 4}, "budget": {"context": 128}},
            "eval.prefix_random_tokens: 60 is not allowed",
        ),
        ({"cluster": {"parallelism": 0}}, "cluster.parallelism: 0 is not allowed"),
        # The GPU model is not a Kubernetes resource: KFP's driver would make it the container limit's name verbatim.
        (
            {"cluster": {"accelerator_type": "nvidia-l4", "accelerator_limit": 1}},
            "cluster.accelerator_type: 'nvidia-l4' is not allowed: not a standard container resource (cpu, memory, "
            "ephemeral-storage) and not domain-prefixed: write the accelerator's Kubernetes resource name, e.g. "
            "nvidia.com/gpu, and select the GPU model with cluster.node_selector",
        ),
        (
            {"cluster": {"accelerator_type": "NVIDIA_H100_80GB_HBM3"}},
            "cluster.accelerator_type: 'NVIDIA_H100_80GB_HBM3'",
        ),
        ({"cluster": {"accelerator_type": "kubernetes.io/gpu"}}, "the kubernetes.io domain is reserved"),
        ({"cluster": {"accelerator_type": "Nvidia.com/gpu"}}, "not a qualified name"),
        ({"cluster": {"accelerator_type": "memory"}}, "not cpu/memory"),
        (
            {"cluster": {"accelerator_limit": 1, "train_image": "ghcr.io/repeatlab/repeatlab:0.2.0"}},
            "cluster.train_image: 'ghcr.io/repeatlab/repeatlab:0.2.0' is not allowed: the CPU image (cluster.image) "
            "cannot use the 1 GPU(s)",
        ),
        ("not a mapping", "config: 'not a mapping' is not allowed: expected a mapping"),
    ],
)
def test_bad_values_name_field_value_and_what_is_allowed(data, expected):
    with pytest.raises(ConfigError) as err:
        config.from_dict(data)
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_accelerator_resource_names():
    assert config.from_dict({}).cluster.accelerator_type == "nvidia.com/gpu"
    # null in older study configs (docs/results records) means the default
    assert config.from_dict({"cluster": {"accelerator_type": None}}).cluster.accelerator_type == "nvidia.com/gpu"
    for ok in ("nvidia.com/gpu", "amd.com/gpu", "nvidia.com/mig-1g.10gb", "gpu.intel.com/i915"):
        assert config.from_dict({"cluster": {"accelerator_type": ok, "accelerator_limit": 1}}).cluster.accelerator_limit
    # a GPU limit on the CUDA image (the default train_image) or with a digest-pinned CPU image elsewhere is fine
    config.from_dict(
        {
            "cluster": {
                "accelerator_limit": 2,
                "image": "r.example/repeatlab@sha256:" + "a" * 64,
                "train_image": "r.example/repeatlab-cuda@sha256:" + "b" * 64,
            }
        }
    )


def test_cluster_runs_need_shared_storage():
    with pytest.raises(ConfigError) as err:
        config.check_for_cluster(config.from_dict({"storage": {"root": "file://./.repeatlab"}}))
    assert str(err.value).startswith("storage.root: 'file://./.repeatlab' is not allowed: a cluster run needs")
    with pytest.raises(ConfigError):
        config.check_for_cluster(config.from_dict({"storage": {"root": "/data/repeatlab"}}))
    config.check_for_cluster(config.from_dict({"storage": {"root": "s3://mlpipeline/repeatlab"}}))


def test_with_storage_root_replaces_the_root_and_validates():
    text = config.from_dict({"storage": {"root": "file:///a"}}).to_json()
    assert config.loads(config.with_storage_root(text, "gs://b/r")).storage.root == "gs://b/r"
    assert config.loads(config.with_storage_root(text, " ")).storage.root == "file:///a"
    with pytest.raises(ConfigError, match=r"^grid.fractions\[0\]: 2.0 is not allowed"):
        config.with_storage_root("grid: {fractions: [2]}", "gs://b/r")


def test_secret_values_never_appear_in_errors():
    with pytest.raises(ConfigError) as err:
        config.from_dict({"storage": {"options": {"s3": {"secret": "hunter2"}}}})
    assert "hunter2" not in str(err.value)


def test_load_reports_the_file(tmp_path):
    bad = tmp_path / "study.yaml"
    bad.write_text("grid:\n  fractions: [0, 2]\n")
    with pytest.raises(ConfigError, match=r"study.yaml: grid.fractions\[1\]"):
        config.load(str(bad))
    broken = tmp_path / "broken.yaml"
    broken.write_text("grid: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        config.load(str(broken))
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match="empty"):
        config.load(str(empty))


def test_stable_hash_ignores_key_order():
    assert config.stable_hash({"a": 1, "b": [1, 2]}) == config.stable_hash({"b": [1, 2], "a": 1})
    assert config.stable_hash({"a": 1}) != config.stable_hash({"a": 2})
