"""``mimic-ils build --engine ray``: the build as one Ray Data streaming pipeline, on one machine or a cluster.

::

    studies ─► prepare        CPU actors: input digests, cached result?, report stage, DICOM decode
            ─► lungs_heart    ┐
            ─► pseudo_normal  │ one actor pool per model, each with its own GPUs per actor (``RayPlan.gpus``):
            ─► anatomy        │ RadEdit (100 DDIM steps) can have six GPUs while HybridGNet shares a quarter of one
            ─► lesion_boxes   ┘
            ─► finish         CPU actors: cue artifacts, grounding, QC, pairs, the study artifact (its commit point)
            ─► driver         progress as studies finish; then the merge into ``--out``

Every stage runs the same functions as the ``local`` engine (:mod:`mimic_ils.orchestration.pipeline`, the vision
runner's per-step call and artifact writer), and every result lands in the same work folder under the same names,
so the two engines give byte-identical output folders. Ray schedules studies as workers free up (no fixed shards:
the slowest node no longer sets the end time), retries the tasks of a worker or node that dies (actor pools restart
their actors; a study's files are written atomically and its artifact last, so a retried study gives the same
bytes), and reaches other machines started with ``ray start``. Before any work the driver checks that the cluster
can be reached, that some node has the GPUs each model stage asks for, and that every node sees the work folder and
the MIMIC-CXR root (a work folder must be shared between nodes).

Ray is an optional extra (``pip install 'mimic-ils[ray]'``); the ``local`` engine needs none of it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import pickle
import secrets
import socket
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from mimic_ils.files import atomic_write_bytes
from mimic_ils.orchestration.pipeline import cached_is_current, check_force, finish_study, input_keys, study_report
from mimic_ils.orchestration.workdir import WorkDir
from mimic_ils.progress import progress
from mimic_ils.rows import Failure
from mimic_ils.schema import MimicIlsError, Study
from mimic_ils.vision import base

logger = logging.getLogger(__name__)

MODEL_STEPS = base.STEPS  # lungs_heart, pseudo_normal, anatomy, lesion_boxes (the runner's order)
STAGES = ("prepare", *MODEL_STEPS, "finish")
_METHODS = {"lungs_heart": "segment", "pseudo_normal": "edit", "anatomy": "segment", "lesion_boxes": "detect"}
# GPUs per actor of each model stage on real backends: RadEdit's 100 denoising steps dominate (docs/scaling.md)
REAL_GPUS = {"lungs_heart": 0.25, "pseudo_normal": 1.0, "anatomy": 0.5, "lesion_boxes": 0.25}
# Environment the workers of a cluster this driver connects to need as well (offline hubs, weights, the commit)
_FORWARDED_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "HF_HUB_CACHE",
                  "MIMIC_ILS_WEIGHTS", "MIMIC_ILS_CODE_COMMIT", "MIMIC_ILS_ALLOW_REMOTE_LLM")


_THIS_MACHINE = (None, "", "local")  # --ray-address values that start a Ray instance here


class RayUnavailable(MimicIlsError):
    """``--engine ray`` without Ray installed, or with a cluster that cannot run the build."""


@dataclass
class RayPlan:
    """Where and with what the Ray pipeline runs.

    ``address``: a running cluster (``host:port`` of ``ray start --head``, ``auto``, ``ray://host:port``), or None
    for a Ray instance on this machine (``num_cpus`` CPUs, default all; it is shut down after the build; a Ray
    already initialised in this process is used as it is). ``gpus``: GPUs per actor of each model stage (None: the
    real backends' :data:`REAL_GPUS` on a device other than the CPU, else none); ``cpus``: CPUs per actor of any
    stage (default 1 for prepare/finish and for a model stage with GPUs, 0.25 for a model stage on CPU, so a
    2-CPU machine runs all six pools); ``max_actors``: the largest pool of any stage (default: as many as the
    cluster's resources allow).
    """

    address: str | None = None
    num_cpus: int | None = None
    gpus: dict[str, float] | None = None
    cpus: dict[str, float] = field(default_factory=dict)
    max_actors: int | None = None

    def __post_init__(self) -> None:
        for name, table in (("--ray-gpus", self.gpus or {}), ("--ray-cpus", self.cpus)):
            allowed = MODEL_STEPS if name == "--ray-gpus" else STAGES
            unknown = sorted(set(table) - set(allowed))
            if unknown:
                raise MimicIlsError(f"{name} {', '.join(unknown)}: expected stages among {', '.join(allowed)}")
            bad = [f"{key}={value}" for key, value in table.items()
                   if not isinstance(value, (int, float)) or not 0 <= value <= 64]
            if bad:
                raise MimicIlsError(f"{name} {', '.join(bad)}: expected a number of 0 to 64 per actor")
        if self.num_cpus is not None and self.num_cpus < 1:
            raise MimicIlsError("--ray-num-cpus must be at least 1")
        if self.max_actors is not None and self.max_actors < 1:
            raise MimicIlsError("--ray-max-actors must be at least 1")

    def stage_gpus(self, on_cpu: bool) -> dict[str, float]:
        defaults = dict.fromkeys(MODEL_STEPS, 0.0) if on_cpu else dict(REAL_GPUS)
        return {step: float((self.gpus or {}).get(step, defaults[step])) for step in MODEL_STEPS}

    def stage_cpus(self, gpus: Mapping[str, float]) -> dict[str, float]:
        defaults = {stage: 1.0 if stage in ("prepare", "finish") or gpus.get(stage, 0) > 0 else 0.25
                    for stage in STAGES}
        return {stage: float(self.cpus.get(stage, defaults[stage])) for stage in STAGES}


def parse_stage_numbers(entries: Sequence[str], flag: str) -> dict[str, float]:
    """``["pseudo_normal=2", "anatomy=0.5"]`` (``--ray-gpus`` / ``--ray-cpus``) → ``{stage: number}``."""
    table = {}
    for entry in entries:
        name, sep, value = entry.partition("=")
        try:
            table[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise MimicIlsError(f"{flag} {entry!r}: expected STAGE=NUMBER, e.g. pseudo_normal=1")
    return table


def import_ray(address: str | None = None):
    """The ``ray`` module with Ray Data, or a one-line reason to install the extra. The first import sets what Ray
    reads at import time: no usage statistics sent anywhere, and token authentication when connecting to a cluster
    (``address``) from a machine that holds a token (``ray start`` clusters check it)."""
    if "ray" not in sys.modules:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        if address not in _THIS_MACHINE and "RAY_AUTH_MODE" not in os.environ and _auth_token_available():
            os.environ["RAY_AUTH_MODE"] = "token"
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as error:
        raise RayUnavailable(f"--engine ray needs Ray Data ({error}); install it with `pip install "
                             "'mimic-ils[ray]'` (the local engine, the default, needs none)") from None
    return ray


# ---------------------------------------------------------------------------------------------------- the stages


@dataclass(frozen=True)
class _Context:
    """What every actor needs to rebuild the project stages on its node (small and picklable)."""

    mimic_root: str
    config: Any  # BuildConfig
    work_root: str
    force: tuple[str, ...]
    gpus: dict[str, float]


@dataclass
class _Item:
    """One study travelling through the pipeline (pickled between stages)."""

    study: Study
    keys: dict[str, Any] | None = None
    cached: bool = False
    report: Any = None  # StructuredReport or the report stage's Failure
    vision_keys: dict[str, str] = field(default_factory=dict)  # DICOM sha256 per frontal image
    statuses: dict[str, str] = field(default_factory=dict)  # runner status (or reason) per frontal image
    pending: dict[str, dict[str, Any]] = field(default_factory=dict)  # images still going through the models


class _Stage:
    """A callable class for ``Dataset.map_batches``: one instance per actor, the project stages built once."""

    def __init__(self, context: _Context) -> None:
        from mimic_ils.orchestration.stages import ProjectStages

        self.context = context
        self.stages = ProjectStages(context.mimic_root, context.config)
        self.work = WorkDir(context.work_root)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = [unpack_item(blob) for blob in batch["item"]]
        return self.process(items)

    def process(self, items: list[_Item]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    @staticmethod
    def pack(items: Sequence[_Item]) -> dict[str, np.ndarray]:
        return {"item": _object_array([pack_item(item) for item in items])}


@dataclass(frozen=True)
class _Bits:
    """A bool mask bit-packed for the object store (19 full-frame masks per image: 97 MB as bools at 2500×2048)."""

    shape: tuple[int, ...]
    packed: np.ndarray

    @classmethod
    def of(cls, mask: np.ndarray) -> _Bits:
        return cls(tuple(mask.shape), np.packbits(mask, axis=None))

    def unpack(self) -> np.ndarray:
        count = int(np.prod(self.shape))
        return np.unpackbits(self.packed, count=count).astype(bool).reshape(self.shape)


def _map_masks(value: Any, function) -> Any:
    """``value`` (a model result: masks, a mapping of masks, a LungsHeart) with each bool mask passed through
    ``function`` (packing, or unpacking ``_Bits``); anything else unchanged."""
    if isinstance(value, np.ndarray) and value.dtype == bool or isinstance(value, _Bits):
        return function(value)
    if isinstance(value, dict):
        return {key: _map_masks(item, function) for key, item in value.items()}
    if isinstance(value, base.LungsHeart):
        return base.LungsHeart(_map_masks(value.lung_right, function), _map_masks(value.lung_left, function),
                               _map_masks(value.heart, function), value.landmarks)
    return value


def pack_item(item: _Item) -> bytes:
    """The pickled item, its masks bit-packed (exact: unpacking gives the same bools)."""
    pending = {dicom_id: _map_masks(state, lambda mask: _Bits.of(mask) if isinstance(mask, np.ndarray) else mask)
               for dicom_id, state in item.pending.items()}
    return pickle.dumps(replace(item, pending=pending), protocol=5)


def unpack_item(blob: bytes) -> _Item:
    item = pickle.loads(blob)
    if isinstance(item, Study):  # the driver's input rows are studies
        return item
    item.pending = {dicom_id: _map_masks(state, lambda mask: mask.unpack() if isinstance(mask, _Bits) else mask)
                    for dicom_id, state in item.pending.items()}
    return item


class _Prepare(_Stage):
    """Input digests; a study whose cached result is current goes straight through; else its report, and its
    frontal images decoded (the ones whose cues are cached are only checked)."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.pack([self.prepare(unpack_item(blob)) for blob in batch["item"]])

    def prepare(self, study: Study) -> _Item:
        from mimic_ils.vision import runner

        force = set(self.context.force)
        keys = input_keys(self.stages, self.work, study)
        item = _Item(study, keys)
        if not force and cached_is_current(self.work, study, keys):
            item.cached = True
            return item
        item.report = study_report(self.stages, self.work, study, keys, force)
        if isinstance(item.report, Failure):
            return item
        frontal = list(study.frontal_images)
        vision_dir = self.work.vision_dir
        if frontal and "vision" in force:
            self.stages.forget_cues(frontal, vision_dir)
        item.vision_keys = self.stages.cue_keys(frontal, vision_dir)
        for image in frontal:
            if runner.artifact_complete(vision_dir / image.dicom_id):
                item.statuses[image.dicom_id] = runner.STATUS_EXISTS
                continue
            pixels = runner.read_frame(self.stages.root, image)
            if isinstance(pixels, str):
                item.statuses[image.dicom_id] = pixels
            else:
                item.pending[image.dicom_id] = {"image": pixels}
        return item


class _ModelStep(_Stage):
    """Vision models over the pending images of a batch of studies, one step after the other (the runner's per-step
    call: a crash is retried image by image, a bad result becomes that image's reason)."""

    def __init__(self, context: _Context, steps: tuple[str, ...]) -> None:
        super().__init__(context)
        self.steps = steps
        self.backends: dict[str, Any] = {}

    def _backend(self, step: str):
        if step not in self.backends:
            from mimic_ils.vision import runner

            config = self.stages.vision_config()
            device = config.device
            if self.context.config.device is None:  # a GPU of this actor (Ray sets CUDA_VISIBLE_DEVICES), or CPU
                device = "cuda:0" if self.context.gpus.get(step, 0) > 0 else "cpu"
            single = runner.VisionConfig(steps={step: config.steps[step]}, device=device,
                                         batch_size=config.batch_size)
            self.backends[step] = runner.create_backends(single, self.stages.root)[step]
        return self.backends[step]

    def process(self, items: list[_Item]) -> dict[str, np.ndarray]:
        for step in self.steps:
            self.run_step(step, items)
        return self.pack(items)

    def run_step(self, step: str, items: list[_Item]) -> None:
        from mimic_ils.vision import runner

        owners = {dicom_id: item for item in items for dicom_id in item.pending}
        ids = sorted(owners)
        if not ids:
            return
        states = [owners[dicom_id].pending[dicom_id] for dicom_id in ids]
        statuses: dict[str, str] = {}
        method = getattr(self._backend(step), _METHODS[step])
        accepted = runner.call_step(step, method, statuses, ids, *_step_inputs(step, states))
        for dicom_id in ids:
            item = owners[dicom_id]
            if dicom_id in accepted:
                item.pending[dicom_id][step] = accepted[dicom_id]
            else:
                item.statuses[dicom_id] = statuses[dicom_id]
                del item.pending[dicom_id]


def model_pools(gpus: Mapping[str, float], cpus: Mapping[str, float]) -> list[tuple[str, ...]]:
    """The model steps grouped into actor pools: consecutive steps asking for the same GPUs and CPUs per actor share
    one pool (on CPUs alone: one pool for all four, so a small machine does not start four sets of processes)."""
    pools: list[list[str]] = []
    for step in MODEL_STEPS:
        if pools and (gpus[pools[-1][-1]], cpus[pools[-1][-1]]) == (gpus[step], cpus[step]):
            pools[-1].append(step)
        else:
            pools.append([step])
    return [tuple(pool) for pool in pools]


def _step_inputs(step: str, states: list[dict[str, Any]]) -> list[list[Any]]:
    """The columns the runner passes to each step (lungs ∪ heart is RadEdit's edit mask)."""
    if step == "pseudo_normal":
        masks = [state["lungs_heart"].lung_right | state["lungs_heart"].lung_left | state["lungs_heart"].heart
                 for state in states]
        return [[state["image"] for state in states], masks]
    if step == "anatomy":
        return [[state["pseudo_normal"] for state in states]]
    return [[state["image"] for state in states]]


class _Finish(_Stage):
    """The cue artifacts of the images the models went through, then grounding, QC, pairs and the study artifact."""

    def process(self, items: list[_Item]) -> dict[str, np.ndarray]:
        rows = [self.finish(item) for item in items]
        return {"study_id": _object_array([study_id for study_id, _ in rows]),
                "outcome": _object_array([outcome for _, outcome in rows])}

    def finish(self, item: _Item) -> tuple[str, str]:
        from mimic_ils.vision import runner

        study = item.study
        if item.cached:
            return study.study_id, "cached"
        vision_dir = self.work.vision_dir
        names = {step: spec.name for step, spec in self.stages.vision_config().steps.items()}
        cues: dict[str, Any] = {}
        if not isinstance(item.report, Failure):
            for dicom_id, state in item.pending.items():
                try:
                    runner.write_artifacts(vision_dir, dicom_id, state["image"], state["lungs_heart"],
                                           state["pseudo_normal"], state["anatomy"], state["lesion_boxes"], names)
                    item.statuses[dicom_id] = runner.STATUS_WRITTEN
                except OSError as error:
                    item.statuses[dicom_id] = f"write failed: {error}"
            cues = self.stages.settle_cues(study.frontal_images, item.statuses, item.vision_keys, vision_dir)
        result = finish_study(self.stages, self.work, study, item.report, cues, item.keys)
        return study.study_id, "retry" if result.transient else "computed"


def _object_array(values: Sequence[Any]) -> np.ndarray:
    array = np.empty(len(values), dtype=object)
    array[:] = list(values)
    return array


# ---------------------------------------------------------------------------------------------------- the driver


def run_ray(stages, work: WorkDir, studies: Sequence[Study], *, plan: RayPlan, force: Sequence[str] = (),
            show_progress: bool = True) -> dict[str, int]:
    """Process ``studies`` (the project stages ``stages``) on Ray; returns ``{"cached", "computed", "retry"}`` as
    :func:`mimic_ils.orchestration.pipeline.run_shard` does."""
    from mimic_ils.orchestration.stages import ProjectStages

    if not isinstance(stages, ProjectStages):
        raise MimicIlsError("--engine ray runs the project's stages (a MIMIC-CXR root and a build config)")
    force = check_force(force)
    ray = import_ray()
    vision = stages.vision_config()
    gpus = plan.stage_gpus(on_cpu=str(vision.device).startswith("cpu"))
    cpus = plan.stage_cpus(gpus)
    # absolute paths: Ray's workers do not run in the driver's working directory
    context = _Context(str(Path(stages.root).absolute()), stages.config, str(work.root.absolute()),
                       tuple(sorted(force)), gpus)
    work.vision_dir.mkdir(parents=True, exist_ok=True)
    counts = {"cached": 0, "computed": 0, "retry": 0}
    with ray_session(plan):
        check_cluster(ray, gpus, cpus, work.root.absolute(), Path(context.mimic_root), studies)
        if not studies:
            return counts
        dataset = _pipeline(ray, context, studies, gpus, cpus, plan.max_actors, stages.config.batch_size)
        with progress("build (ray)", len(studies), "studies", enabled=show_progress) as bar:
            try:
                for row in dataset.iter_rows():
                    counts[row["outcome"]] += 1
                    bar.update()
            except Exception as error:  # a stage raised: the one-line reason of our own error, not Ray's wrapping
                raise _own_error(error) from None
    return counts


def _pipeline(ray, context: _Context, studies: Sequence[Study], gpus: Mapping[str, float],
              cpus: Mapping[str, float], max_actors: int | None, batch_size: int):
    from ray.data import ActorPoolStrategy

    batch = max(1, int(batch_size))
    items = [{"item": pickle.dumps(study, protocol=5)} for study in studies]
    dataset = ray.data.from_items(items, override_num_blocks=max(1, math.ceil(len(items) / batch)))

    def pool() -> ActorPoolStrategy:
        return ActorPoolStrategy(min_size=1, max_size=max_actors)

    dataset = dataset.map_batches(_Prepare, fn_constructor_args=(context,), batch_size=batch, compute=pool(),
                                  num_cpus=cpus["prepare"])
    for steps in model_pools(gpus, cpus):
        dataset = dataset.map_batches(_ModelStep, fn_constructor_args=(context, steps), batch_size=batch,
                                      compute=pool(), num_cpus=cpus[steps[0]], num_gpus=gpus[steps[0]] or None)
    return dataset.map_batches(_Finish, fn_constructor_args=(context,), batch_size=batch, compute=pool(),
                               num_cpus=cpus["finish"])


def _own_error(error: BaseException) -> BaseException:
    """The MimicIlsError or OSError a stage raised, unwrapped from Ray's exceptions (else ``error`` itself)."""
    seen, queue = set(), [error]
    while queue:
        current = queue.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, (MimicIlsError, OSError)) and current is not error:
            if isinstance(current, MimicIlsError):
                return MimicIlsError(str(current).splitlines()[0] if str(current) else type(current).__name__)
            return current
        queue += [current.__cause__, current.__context__, getattr(current, "cause", None)]
    return error


# --------------------------------------------------------------------------------- the cluster, checked at start


@contextlib.contextmanager
def ray_session(plan: RayPlan) -> Iterator[None]:
    """Ray connected for the build: a Ray this process already initialised, the cluster at ``plan.address``, or a
    new instance on this machine (shut down afterwards)."""
    check_address(plan.address)
    ray = import_ray(plan.address)
    if ray.is_initialized():
        yield
        return
    env = {name: os.environ[name] for name in _FORWARDED_ENV if name in os.environ}
    options: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING,
                               "runtime_env": {"env_vars": env} if env else None}
    if plan.address in _THIS_MACHINE:
        options["num_cpus"] = plan.num_cpus or os.cpu_count() or 1
    try:
        ray.init(address=plan.address or None, **options)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise RayUnavailable(f"cannot connect to the Ray cluster at {plan.address or 'this machine'}: "
                             f"{_root_reason(error)}") from None
    _quiet_ray_data()
    try:
        yield
    finally:
        ray.shutdown()


def _auth_token_available() -> bool:
    return bool(os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
                or (Path.home() / ".ray" / "auth_token").is_file())


def _root_reason(error: BaseException) -> str:
    """The first line of the innermost cause (Ray's ConnectionError hides an AuthenticationError, for one)."""
    text = str(error)
    while error.__cause__ is not None:
        error = error.__cause__
        text += f"\n{type(error).__name__}: {error}"
    line = str(error).splitlines()[0] if str(error) else type(error).__name__
    if "InvalidAuthToken" in text or "AuthenticationError" in text:
        return ("the cluster uses token authentication and this machine has not its token: copy it from the head "
                "(`ray get-auth-token`) into ~/.ray/auth_token or RAY_AUTH_TOKEN, with RAY_AUTH_MODE=token")
    return line


def _quiet_ray_data() -> None:
    """Our own progress lines, not Ray Data's per-operator bars and execution banners."""
    from ray.data import DataContext

    logging.getLogger("ray.data").setLevel(logging.WARNING)
    context = DataContext.get_current()
    for name, value in (("enable_progress_bars", False), ("print_on_execution_start", False),
                        ("enable_operator_progress_bars", False)):
        if hasattr(context, name):
            setattr(context, name, value)


def check_address(address: str | None, timeout_s: float = 5.0) -> None:
    """A ``host:port`` (or ``ray://host:port``) that does not answer is refused in one line, before Ray retries
    it for minutes; ``auto`` and ``local`` are left to Ray."""
    if address in (*_THIS_MACHINE, "auto"):
        return
    target = address.split("://", 1)[-1]
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise RayUnavailable(f"--ray-address {address!r}: expected host:port (as `ray start --head` prints), "
                             "ray://host:port, auto or local")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as error:
        raise RayUnavailable(f"cannot reach the Ray cluster at {address} ({error.strerror or error}); start it with "
                             "`ray start --head` on the head node, or fix --ray-address") from None


def check_cluster(ray, gpus: Mapping[str, float], cpus: Mapping[str, float], work_root: Path, mimic_root: Path,
                  studies: Sequence[Study]) -> None:
    """Before any work: some node has the GPUs (and CPUs) each stage asks for per actor, and every node sees the
    work folder and the MIMIC-CXR root."""
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    check_resources(nodes, gpus, cpus)
    probe = next((study.report_path for study in studies), None)
    check_shared_folders(ray, nodes, Path(work_root), Path(mimic_root), probe)


def check_resources(nodes: Sequence[Mapping[str, Any]], gpus: Mapping[str, float],
                    cpus: Mapping[str, float]) -> None:
    """One line naming the first stage no node can host (GPUs per actor, then CPUs per actor)."""
    for kind, table, flag in (("GPU", gpus, "--ray-gpus"), ("CPU", cpus, "--ray-cpus")):
        best = max((float(node.get("Resources", {}).get(kind, 0.0)) for node in nodes), default=0.0)
        for stage, need in table.items():
            if need > best:
                hint = f"pass {flag} {stage}=0 to run it on CPUs" if kind == "GPU" else f"lower {flag} {stage}"
                raise RayUnavailable(
                    f"the {stage} stage asks for {need:g} {kind} per actor, but no node of the Ray cluster has "
                    f"that many (the most on one node: {best:g}); add such nodes, or {hint}")


def check_shared_folders(ray, nodes: Sequence[Mapping[str, Any]], work_root: Path, mimic_root: Path,
                         probe: str | None) -> None:
    """Every alive node reads a token the driver writes into the work folder (a shared file system) and sees a
    report file of the MIMIC-CXR root; the first node that does not is named."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    work_root.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(16)
    token_path = work_root / f".ray-check-{token}"
    atomic_write_bytes(token_path, token.encode())
    try:
        check = ray.remote(num_cpus=0, max_retries=2)(_node_sees)
        refs = {
            node.get("NodeManagerAddress", node["NodeID"]): check.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
            ).remote(str(token_path), token, str(mimic_root / probe) if probe else str(mimic_root))
            for node in nodes
        }
        for address, ref in refs.items():
            problem = ray.get(ref, timeout=300)
            if problem:
                raise RayUnavailable(f"node {address} of the Ray cluster {problem}; the work folder and the "
                                     "MIMIC-CXR root must be on a file system every node shares")
    finally:
        token_path.unlink(missing_ok=True)


def _node_sees(token_path: str, token: str, mimic_probe: str) -> str | None:
    """Run on one node: None when it sees the driver's token and the MIMIC-CXR file, else what it does not see."""
    try:
        if Path(token_path).read_text() != token:
            return f"reads another file at {token_path}"
    except OSError:
        return f"does not see the work folder {Path(token_path).parent}"
    if not Path(mimic_probe).exists():
        return f"does not see {mimic_probe}"
    return None


__all__ = ["REAL_GPUS", "RayPlan", "RayUnavailable", "check_address", "check_resources", "import_ray",
           "parse_stage_numbers", "run_ray"]
