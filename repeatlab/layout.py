"""The storage layout: every folder and file name of a study's storage, in one place (docs/architecture.md).

    {root}/corpora/{corpus_id}/   manifest.json, config.json, {split}.bin, tokenizer.json
    {root}/runs/{point_id}/       point.json, execution.json, plan.json, plan.npy, repeated.npy, train.jsonl,
                                  done.json, eval.json, eval-step-NNNNNNN.json, lease.json,
                                  checkpoints/step-NNNNNNN/{model.pt, optim.pt, rng.pt, exposures.npy, state.json}
    {root}/studies/{study}/       config.yaml, points.json, analysis.json, report/

No other module spells these names: a reader or writer asks `Corpus(url)`, `Run(url)` or `Study(url)` for a path.
The classes only build URLs (no I/O), except `Run.checkpoint_steps`, which lists the checkpoints folder.
"""

from __future__ import annotations

from dataclasses import dataclass

from repeatlab import storage

CORPORA, RUNS, STUDIES = "corpora", "runs", "studies"
# Record file names (records.py names its errors after them)
POINT, EXECUTION, DONE, EVAL, POINTS = "point.json", "execution.json", "done.json", "eval.json", "points.json"
MANIFEST, TOKENIZER = "manifest.json", "tokenizer.json"
LEASE = "lease.json"
PACKS = "packs.json"  # the study's training packs (repeatlab.packs): which points trained together
# A run's mixture plan (plan.json: its summary and hashes; the arrays of offsets) and its learning curve
PLAN, PLAN_ARRAY, REPEATED_ARRAY, TRAIN_LOG = "plan.json", "plan.npy", "repeated.npy", "train.jsonl"
AUDIT_PLAN = "plan.json"  # the audit fan-out's work folder: {work_url}/plan.json
CHECKPOINTS = "checkpoints"
CHECKPOINT_PREFIX = "step-"
# The files of one checkpoint; state.json is written last, so a checkpoint without it is incomplete.
MODEL_FILE, OPTIM_FILE, RNG_FILE, EXPOSURES_FILE = "model.pt", "optim.pt", "rng.pt", "exposures.npy"
CHECKPOINT_FILES = (MODEL_FILE, OPTIM_FILE, RNG_FILE, EXPOSURES_FILE)
CHECKPOINT_STATE = "state.json"
# The records of a run and of a study that `repeatlab archive` keeps (no checkpoints, no plans' arrays).
RUN_RECORDS = (POINT, PLAN, DONE, EVAL, TRAIN_LOG)
STUDY_RECORDS = ("config.yaml", POINTS, PACKS, "analysis.json")


def corpus_url(root: str, corpus_id: str) -> str:
    return storage.join(storage.normalize_root(root), CORPORA, corpus_id)


def run_url(root: str, point_id: str) -> str:
    return storage.join(storage.normalize_root(root), RUNS, point_id)


def study_url(root: str, study: str) -> str:
    return storage.join(storage.normalize_root(root), STUDIES, study)


def audits_url(root: str) -> str:
    """Where `repeatlab audit` writes its reports by default: {root}/audits/{audit_id}/."""
    return storage.join(storage.normalize_root(root), "audits")


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{int(step):07d}"


@dataclass(frozen=True)
class Corpus:
    """A prepared corpus folder."""

    url: str

    @property
    def manifest(self) -> str:
        return storage.join(self.url, MANIFEST)

    @property
    def config(self) -> str:
        return storage.join(self.url, "config.json")

    @property
    def tokenizer(self) -> str:
        return storage.join(self.url, TOKENIZER)

    @staticmethod
    def split_file(split: str) -> str:
        """The file name of a split's token shard, as the manifest records it."""
        return f"{split}.bin"

    def split(self, split: str) -> str:
        return storage.join(self.url, self.split_file(split))


@dataclass(frozen=True)
class Run:
    """One grid point's run folder."""

    url: str

    def file(self, name: str) -> str:
        return storage.join(self.url, name)

    @property
    def point(self) -> str:
        return self.file(POINT)

    @property
    def execution(self) -> str:
        return self.file(EXECUTION)

    @property
    def plan_json(self) -> str:
        return self.file(PLAN)

    @property
    def plan_npy(self) -> str:
        return self.file(PLAN_ARRAY)

    @property
    def repeated_npy(self) -> str:
        return self.file(REPEATED_ARRAY)

    @property
    def train_log(self) -> str:
        return self.file(TRAIN_LOG)

    @property
    def done(self) -> str:
        return self.file(DONE)

    @property
    def eval(self) -> str:
        return self.file(EVAL)

    def eval_at(self, step: int | None, final_step: int) -> str:
        """eval.json for the final checkpoint; eval-step-NNNNNNN.json for an earlier one."""
        if step is None or int(step) == final_step:
            return self.eval
        return self.file(f"eval-step-{int(step):07d}.json")

    @property
    def lease(self) -> str:
        return self.file(LEASE)

    @property
    def checkpoints(self) -> str:
        return self.file(CHECKPOINTS)

    def checkpoint(self, step: int) -> str:
        return storage.join(self.checkpoints, checkpoint_name(step))

    def checkpoint_file(self, step: int, name: str) -> str:
        """A file of the checkpoint at `step`: one of CHECKPOINT_FILES or CHECKPOINT_STATE."""
        return storage.join(self.checkpoint(step), name)

    def checkpoint_state(self, step: int) -> str:
        return self.checkpoint_file(step, CHECKPOINT_STATE)

    def is_trained(self) -> bool:
        """The one "is this point done?" check: done.json is written last, after the final checkpoint."""
        return storage.exists(self.done)

    def checkpoint_steps(self, complete_only: bool = False) -> list[int]:
        """Steps of the checkpoint folders, ascending; with complete_only, those holding state.json."""
        steps = []
        for name in storage.listdir(self.checkpoints):
            digits = name[len(CHECKPOINT_PREFIX) :]
            if name.startswith(CHECKPOINT_PREFIX) and digits.isdigit():
                if not complete_only or storage.exists(self.checkpoint_state(int(digits))):
                    steps.append(int(digits))
        return sorted(steps)


@dataclass(frozen=True)
class Study:
    """A study's folder: its resolved config, its points and its results."""

    url: str

    @property
    def config(self) -> str:
        return storage.join(self.url, "config.yaml")

    @property
    def points(self) -> str:
        return storage.join(self.url, POINTS)

    @property
    def packs(self) -> str:
        return storage.join(self.url, PACKS)

    @property
    def analysis(self) -> str:
        return storage.join(self.url, "analysis.json")

    @property
    def report(self) -> str:
        return storage.join(self.url, "report")
