"""The ONNX backend operator tests, run through a real `wasm-host`, tabled by operator.

    python tests/python/onnx_conformance.py --subset 80
    python tests/python/onnx_conformance.py --all --write docs/onnx-conformance.md

The cases are the `onnx` package's own (`onnx.backend.test.case.node.collect_testcases()`: a
model, its inputs and the expected outputs; the wheel does not ship the `data/node` folders).
Only the cases onnxruntime itself passes count: onnxruntime is the reference (design.md §10), so
a case it fails says nothing about the host.

Packing costs ~35-60 s per component (the runner is compiled again for each), so the cases are
merged side by side into a few graphs (names prefixed `cNNNN__`), one per opset. A pack that
fails names the node or input it cannot take: that case is dropped with the reason and the
group is packed again, which is cheap, because only a successful pack compiles. One host then
serves every packed group from a model repository, and each group's inputs go in one request
(tritonclient.http, binary tensors). Every case ends as `pass`, `fail` (a wrong answer, with its
largest error) or `refused` (with the reason the host or the packer gave); a wrong answer is
never counted as a pass.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np

from onnx_graphs import side_by_side

ROOT = Path(__file__).resolve().parents[2]
HOST = ROOT / "target" / "release" / "wasm-host"
ANSI = re.compile(r"\x1b\[[0-9;]*m")
LISTENING = re.compile(r"listening on http://(\S+)")
PREFIX = re.compile(r"\bc(\d{4})__")
UNSUPPORTED = re.compile(r"operator (\S+?)\.(\w+) \(node `[^`]*`\) is not supported")
# Each group's pack compiles one component (~35-60 s on 2 idle cores; more when loaded).
PACK_TIMEOUT = 900
STARTUP_TIMEOUT = 600.0
# The largest group: bigger groups pay fewer compiles, but one request carries all its tensors.
GROUP_SIZE = 400


@dataclasses.dataclass
class Case:
    """One backend test case and what became of it."""

    index: int
    name: str
    op: str
    model: object  # onnx.ModelProto
    inputs: list
    outputs: list
    opset: dict = dataclasses.field(default_factory=dict)
    status: str = ""  # "", "onnxruntime fails", "pass", "fail", "refused"
    reason: str = ""
    max_error: float = 0.0

    @property
    def prefix(self) -> str:
        return f"c{self.index:04d}__"


# ---------------------------------------------------------------- the cases


def _op_of(name: str, model) -> str:
    """The operator a case tests: its node's type, or for a function expanded into many nodes
    (`*_expanded`) the operator its name starts with."""
    ops = [n.op_type for n in model.graph.node]
    if len(set(ops)) == 1:
        return ops[0]
    key = name.removeprefix("test_").replace("_", "").lower()
    from onnx import defs

    candidates = [s.name for s in defs.get_all_schemas() if key.startswith(s.name.lower())]
    return max(candidates, key=len) if candidates else (ops[0] if ops else "?")


def collect() -> list[Case]:
    """Every node test case with a data set, sorted by name (the numbering is stable for one
    `onnx` version, so the subset is too)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from onnx.backend.test.case.node import collect_testcases

        cases = [c for c in collect_testcases() if c.kind == "node" and c.data_sets]
    cases.sort(key=lambda c: c.name)
    out = []
    for ix, c in enumerate(cases):
        inputs, outputs = c.data_sets[0]
        opset = {o.domain or "": o.version for o in c.model.opset_import}
        out.append(Case(ix, c.name, _op_of(c.name, c.model), c.model, list(inputs),
                        list(outputs), opset))
    return out


def subset(cases: list[Case], n: int) -> list[Case]:
    """Every k-th case by name among those that share the newest opset (after `group`'s
    hoisting), so the subset packs as one component: deterministic, spread over the operators
    alphabetically, and one compile long."""
    newest = group(cases, size=len(cases))[0]
    newest.sort(key=lambda c: c.name)
    k = max(1, len(newest) // n)
    return newest[::k][:n]


# ------------------------------------------------------------- comparisons


def tolerance(dtype) -> tuple[float, float] | None:
    """(rtol, atol) for a floating dtype, None for exact comparison. fp32 and fp64 as the
    sklearn tests compare them; half precision keeps ~3 decimal digits, bfloat16 ~2."""
    name = np.dtype(dtype).name
    if name in ("float32", "float64", "complex64", "complex128"):
        return 1e-4, 1e-5
    if name == "float16":
        return 1e-2, 1e-3
    if name == "bfloat16":
        return 4e-2, 1e-2
    if np.issubdtype(np.dtype(dtype), np.floating) or name.startswith("float"):
        return 1e-1, 1e-1  # the 8- and 4-bit floats
    return None


def compare(want, have) -> tuple[bool, str, float]:
    """(equal, why not, largest error) for one expected output and one computed."""
    if isinstance(want, (list, dict)) or want is None:
        return False, f"not a tensor ({type(want).__name__})", float("inf")
    want = np.asarray(want)
    if have is None:
        return False, "no output", float("inf")
    have = np.asarray(have)
    if have.shape != want.shape:
        return False, f"shape {list(have.shape)}, expected {list(want.shape)}", float("inf")
    if want.dtype.kind in "OUS":
        same = np.array_equal(have.astype(str), want.astype(str))
        return same, "" if same else "strings differ", 0.0 if same else float("inf")
    tol = tolerance(want.dtype)
    if tol is None:
        if want.dtype.kind != have.dtype.kind and not (want.dtype.kind in "iu"
                                                      and have.dtype.kind in "iu"):
            return False, f"dtype {have.dtype}, expected {want.dtype}", float("inf")
        diff = have.astype(np.float64) - want.astype(np.float64) if want.size else np.zeros(0)
        err = float(np.max(np.abs(diff))) if diff.size else 0.0
        same = np.array_equal(have, want)
        return same, "" if same else f"{int(np.sum(have != want))} elements differ", err
    w, h = want.astype(np.float64), have.astype(np.float64)
    rtol, atol = tol
    close = np.isclose(h, w, rtol=rtol, atol=atol, equal_nan=True)
    finite = np.isfinite(w) & np.isfinite(h)
    err = float(np.max(np.abs(h - w)[finite])) if finite.any() else 0.0
    if not close.all():
        if not finite[~close].all():
            err = float("inf")
        return False, f"{int(np.sum(~close))} of {w.size} elements out of tolerance", err
    return True, "", err


# ----------------------------------------------------------- onnxruntime


def run_onnxruntime(cases: list[Case]) -> None:
    """Mark the cases onnxruntime fails: they are the reference's gaps, not the host's."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    opts.intra_op_num_threads = 1
    for case in cases:
        try:
            sess = ort.InferenceSession(case.model.SerializeToString(), opts,
                                        providers=["CPUExecutionProvider"])
            names = [i.name for i in sess.get_inputs()]
            got = sess.run(None, dict(zip(names, case.inputs)))
        except Exception as err:  # noqa: BLE001 - any failure of the reference is a skip
            case.status, case.reason = "onnxruntime fails", _one_line(err)
            continue
        for want, have in zip(case.outputs, got):
            ok, why, _ = compare(want, have)
            if not ok:
                case.status, case.reason = "onnxruntime fails", f"onnxruntime: {why}"
                break


# ---------------------------------------------------------------- grouping

# OIP datatypes the host carries (host/src/runtime/contract.rs), by numpy dtype name.
CARRIED = {"bool": "BOOL", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32",
           "uint64": "UINT64", "int8": "INT8", "int16": "INT16", "int32": "INT32",
           "int64": "INT64", "float16": "FP16", "float32": "FP32", "float64": "FP64"}


def refuse_statically(case: Case) -> str:
    """Why a case cannot be put to the host at all, or "": the protocol carries tensors of the
    datatypes in `CARRIED` (BYTES too, but the ONNX runner maps no string tensors). Everything
    else (scalars, empty tensors, ops) is decided by trying."""
    for kind, values, infos in (("input", case.inputs, case.model.graph.input),
                                ("output", case.outputs, case.model.graph.output)):
        for value, info in zip(values, infos):
            if not info.type.HasField("tensor_type"):
                what = info.type.WhichOneof("value")
                return f"{kind} `{info.name}` is a {what}, not a tensor"
            dt = np.asarray(value).dtype
            if dt.name not in CARRIED and dt.kind not in "OUS":
                return f"{kind} `{info.name}` is {dt.name}: no Open Inference Protocol datatype"
    return ""


def _same_schemas(case: Case, opset: dict) -> bool:
    """Whether every node of the case means the same under `opset` as under its own imports,
    so the case can join a group that imports `opset`."""
    from onnx import defs

    for domain, version in case.opset.items():
        if opset.get(domain, 0) < version:
            return False
    for node in case.model.graph.node:
        domain = node.domain or ""
        if domain not in case.opset:
            return False
        try:
            mine = defs.get_schema(node.op_type, case.opset[domain], domain).since_version
            theirs = defs.get_schema(node.op_type, opset[domain], domain).since_version
        except Exception:  # noqa: BLE001 - an unknown schema: keep the case's own opset
            return False
        if mine != theirs:
            return False
    return True


def group(cases: list[Case], size: int = GROUP_SIZE) -> list[list[Case]]:
    """Cases by the opset imports they can share: each case joins the newest opset under
    which its nodes keep the schema they have in its own opset (most do), so a handful of
    groups cover the suite; groups hold at most `size` cases."""
    opsets = sorted({tuple(sorted(c.opset.items())) for c in cases}, reverse=True,
                    key=lambda o: [v for _, v in o])
    buckets = collections.defaultdict(list)
    for case in cases:
        for opset in opsets:
            if _same_schemas(case, dict(opset)):
                buckets[opset].append(case)
                break
        else:
            buckets[tuple(sorted(case.opset.items()))].append(case)
    groups = []
    for key in sorted(buckets, key=lambda k: (-len(buckets[k]), k)):
        members = buckets[key]
        for start in range(0, len(members), size):
            groups.append(members[start:start + size])
    return groups


def merged(cases: list[Case], opset: dict | None = None):
    """One graph holding the cases side by side, every name prefixed `cNNNN__`; nodes and
    attributes untouched, so each case computes what it computes alone."""
    models = {case.prefix: case.model for case in cases}
    return side_by_side(models, "onnx_conformance", "wasm-host tests/python/onnx_conformance.py",
                        opset)


def feeds(case: Case) -> dict:
    """The case's inputs by their merged names."""
    return {case.prefix + i.name: v for i, v in zip(case.model.graph.input, case.inputs)}


def check_merge(cases: list[Case], opset: dict | None = None) -> list[Case]:
    """onnxruntime on the merged graph must still give every case's expected outputs: a merge
    that changed a case would otherwise show up as the host's wrong answer. Returns the cases
    that merge; one that does not (onnxruntime refuses it under the group's opset, or answers
    otherwise) is found by halving and refused, with the reason."""
    if opset is None:
        opset = {}
        for case in cases:
            for domain, version in case.opset.items():
                opset[domain] = max(opset.get(domain, 0), version)
    try:
        _check_merge(cases, opset)
        return cases
    except Exception as err:  # noqa: BLE001 - onnxruntime's errors, a changed answer
        if len(cases) == 1:
            cases[0].status = "refused"
            cases[0].reason = ("harness: onnxruntime fails it merged into its opset group "
                               f"({_one_line(err)})")
            return []
        half = len(cases) // 2
        return check_merge(cases[:half], opset) + check_merge(cases[half:], opset)


def _check_merge(cases: list[Case], opset: dict) -> None:
    import onnxruntime as ort

    model = merged(cases, opset)
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    feed = {}
    for case in cases:
        feed.update(feeds(case))
    names = [o.name for o in sess.get_outputs()]
    got = dict(zip(names, sess.run(None, feed)))
    for case in cases:
        for info, want in zip(case.model.graph.output, case.outputs):
            ok, why, _ = compare(want, got[case.prefix + info.name])
            if not ok:
                raise AssertionError(f"merging changed {case.name}: {why}")


# ------------------------------------------------------------- the host


def _one_line(err) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= 300 else text[:300] + "…"


def host_env(cache: Path) -> dict:
    env = dict(os.environ, NO_COLOR="1", WASM_HOST_CACHE_DIR=str(cache))
    env.pop("RUST_LOG", None)
    return env


def pack_group(host: Path, cases: list[Case], out: Path, cache: Path, log) -> list[Case]:
    """Pack the group into `out`; a case the packer refuses (its error names the case's
    prefix) is dropped, marked refused with the error, and the rest packed again. An error
    that names no case (the runner crashed) is traced to its case by halving the group with
    probe packs that stop before compiling. Returns the cases packed."""
    import onnx

    pending = [c for c in cases if not c.status]
    while pending:
        src = cache.parent / "onnx" / f"{out.parent.name}.onnx"
        src.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(merged(pending), src)
        started = time.monotonic()
        done = subprocess.run([str(host), "pack", str(src), "-o", str(out),
                               "--name", out.parent.name],
                              env=host_env(cache), capture_output=True, text=True,
                              timeout=PACK_TIMEOUT)
        took = time.monotonic() - started
        if done.returncode == 0:
            log(f"  packed {len(pending)} cases in {took:.0f} s")
            out.with_suffix(".cases").write_text("\n".join(c.name for c in pending) + "\n")
            return pending
        error = ANSI.sub("", done.stderr).strip().splitlines()
        error = error[-1] if error else f"pack exited with {done.returncode}"
        # The merged file's path says nothing about the case.
        error = re.sub(r"^\S+\.onnx: ", "", error.removeprefix("error: "))
        named = {int(m) for m in PREFIX.findall(error)}
        culprits = [c for c in pending if c.index in named]
        if not culprits:
            culprits = [_bisect(host, pending, cache, log)]
            log(f"  pack failed naming no case ({error[:100]}); it was {culprits[0].name}")
        # The runner checks operators before anything else: every case using an operator it
        # lacks is refused for the same reason, so they go in one retry, not one each.
        lacking = UNSUPPORTED.search(error)
        if lacking:
            domain = "" if lacking.group(1) == "ai.onnx" else lacking.group(1)
            op = lacking.group(2)
            culprits += [c for c in pending if c not in culprits and any(
                n.op_type == op and (n.domain or "") == domain for n in c.model.graph.node)]
        for case in culprits:
            case.status = "refused"
            case.reason = "pack: " + PREFIX.sub("", error)
        log(f"  pack refused {', '.join(c.name for c in culprits)} ({took:.1f} s)")
        pending = [c for c in pending if not c.status]
    return []


# A probe pack still running after this long has loaded the graph and is compiling it: loading
# fails in ~1-3 s, compiling takes 35 s or more. Only `_bisect` relies on it, to find a case
# without paying compiles; a wrong guess costs time, never a wrong status.
PROBE_SECONDS = 15


def _loads(host: Path, cases: list[Case], cache: Path) -> bool:
    """Whether the packer gets past loading these cases (killed once it compiles)."""
    import onnx

    src = cache.parent / "onnx" / "probe.onnx"
    src.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(merged(cases), src)
    try:
        subprocess.run([str(host), "pack", str(src), "-o", str(src.with_suffix(".wasm"))],
                       env=host_env(cache), capture_output=True, timeout=PROBE_SECONDS)
    except subprocess.TimeoutExpired:
        return True
    return src.with_suffix(".wasm").exists()


def _bisect(host: Path, cases: list[Case], cache: Path, log) -> Case:
    """The case that makes a pack fail without naming itself (a crash in the runner): halve
    the cases until one is left, keeping the half that still fails to load."""
    while len(cases) > 1:
        half = cases[: len(cases) // 2]
        cases = cases[len(cases) // 2:] if _loads(host, half, cache) else half
    return cases[0]


@dataclasses.dataclass
class Served:
    addr: str
    proc: subprocess.Popen
    log: list


def serve(host: Path, repository: Path, cache: Path) -> Served:
    """`wasm-host --model-repository REPOSITORY` on an ephemeral loopback port."""
    proc = subprocess.Popen(
        [str(host), "--bind", "127.0.0.1:0", "--instances", "1",
         "--model-repository", str(repository)],
        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, env=host_env(cache))
    log, ready, found = [], threading.Event(), []

    def drain():
        for raw in proc.stderr:
            line = ANSI.sub("", raw.decode("utf-8", "replace")).rstrip("\n")
            log.append(line)
            m = LISTENING.search(line)
            if m and not ready.is_set():
                found.append(m.group(1))
                ready.set()
        ready.set()

    threading.Thread(target=drain, daemon=True).start()
    if not ready.wait(STARTUP_TIMEOUT) or not found:
        stop(Served("", proc, log))
        raise RuntimeError("wasm-host did not start; its log:\n" + "\n".join(log))
    return Served(found[0], proc, log)


def stop(served: Served) -> None:
    """Stop the host by its PID: SIGTERM, then SIGKILL after 15 s."""
    proc = served.proc
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def infer_group(addr: str, model: str, cases: list[Case], log) -> None:
    """Every case's inputs in one request; each output compared with the expected one. A
    request the host refuses names the case it could not run: that case is refused with the
    reason, its inputs replaced by zeros of the same shape (the pack ran the graph on zeros)
    and the request sent again."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(url=addr, network_timeout=600.0,
                                              connection_timeout=60.0)
    live = list(cases)
    zeroed = set()
    try:
        for _attempt in range(len(cases) + 1):
            request, wanted = [], []
            for case in live:
                for name, value in feeds(case).items():
                    value = np.asarray(value)
                    if case.index in zeroed:
                        value = np.zeros_like(value)
                    dt = CARRIED.get(value.dtype.name, "BYTES")
                    x = httpclient.InferInput(name, list(value.shape), dt)
                    x.set_data_from_numpy(value, binary_data=True)
                    request.append(x)
                if case.index not in zeroed:
                    wanted += [httpclient.InferRequestedOutput(case.prefix + o.name,
                                                               binary_data=True)
                               for o in case.model.graph.output]
            try:
                result = client.infer(model, request, outputs=wanted)
            except InferenceServerException as err:
                error = _one_line(err.message() or err)
                named = {int(m) for m in PREFIX.findall(error)}
                culprits = [c for c in live if c.index in named and c.index not in zeroed]
                if not culprits:
                    for case in live:
                        if case.index not in zeroed:
                            case.status, case.reason = "refused", f"host: {error}"
                    log(f"  {model}: request refused naming no case: {error[:200]}")
                    return
                for case in culprits:
                    case.status = "refused"
                    case.reason = "host: " + PREFIX.sub("", error)
                    zeroed.add(case.index)
                log(f"  {model}: host refused {', '.join(c.name for c in culprits)}")
                continue
            for case in live:
                if case.index in zeroed:
                    continue
                worst, why = 0.0, ""
                ok = True
                for info, want in zip(case.model.graph.output, case.outputs):
                    good, reason, err = compare(want, result.as_numpy(case.prefix + info.name))
                    worst = max(worst, err)
                    if not good:
                        ok, why = False, why or f"`{info.name}`: {reason}"
                case.status, case.reason, case.max_error = ("pass" if ok else "fail"), why, worst
            return
    finally:
        client.close()


# ------------------------------------------------------------------ the run


def run(cases: list[Case], host: Path = HOST, workdir: Path | None = None,
        log=lambda s: None) -> list[Case]:
    """Every case through onnxruntime, then the ones it passes through the host; returns the
    cases, each with its status."""
    started = time.monotonic()
    run_onnxruntime(cases)
    for case in cases:
        if not case.status and (why := refuse_statically(case)):
            case.status, case.reason = "refused", why
    live = [c for c in cases if not c.status]
    reference = sum(c.status != "onnxruntime fails" for c in cases)
    log(f"{len(cases)} cases, onnxruntime passes {reference}, {len(live)} to pack ({time.monotonic() - started:.0f} s)")
    own = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="conf-")) if own else workdir
    repository, cache = workdir / "repository", workdir / "cache"
    repository.mkdir(parents=True, exist_ok=True)
    try:
        for gx, members in enumerate(group(live)):
            members = check_merge(members)
            if not members:
                continue
            name = f"g{gx:02d}"
            (repository / name).mkdir(exist_ok=True)
            log(f"{name}: {len(members)} cases, opsets {members[0].opset}")
            pack_group(host, members, repository / name / "model.wasm", cache, log)
        for sub in list(repository.iterdir()):
            if not (sub / "model.wasm").exists():
                shutil.rmtree(sub)  # every case of the group was refused
        served = serve(host, repository, cache)
        try:
            import tritonclient.http as httpclient

            client = httpclient.InferenceServerClient(url=served.addr)
            models = [m["name"] for m in client.get_model_repository_index()]
            client.close()
            for model in sorted(models):
                members = _members(repository / model / "model.wasm", cases)
                log(f"{model}: {len(members)} cases to infer")
                infer_group(served.addr, model, members, log)
        finally:
            stop(served)
    finally:
        if own:
            shutil.rmtree(workdir, ignore_errors=True)
    log(f"done in {time.monotonic() - started:.0f} s")
    return cases


def _members(wasm: Path, cases: list[Case]) -> list[Case]:
    """The cases packed into a component, read back from the merged graph saved beside it."""
    listing = wasm.with_suffix(".cases")
    wanted = set(listing.read_text().split())
    return [c for c in cases if c.name in wanted]


# ------------------------------------------------------------------ the table


def table(cases: list[Case], command: str) -> str:
    """The Markdown report: totals, a row per operator, then the wrong answers."""
    reference = [c for c in cases if c.status != "onnxruntime fails"]
    count = collections.Counter(c.status for c in reference)
    rate = count["pass"] / len(reference) if reference else 0.0
    lines = [
        "# ONNX backend operator tests through wasm-host",
        "",
        "Every node test case of the `onnx` package that onnxruntime passes, packed into a model",
        "component (tract inside the sandbox), served by a real `wasm-host` and asked through",
        "tritonclient.http. Regenerate with `make conformance`; the harness is",
        "`tests/python/onnx_conformance.py`. A *fail* is a wrong answer; *refused* means the",
        "packer or the host turned the case down with the reason shown.",
        "",
        f"Command: `{command}`",
        "",
        "| cases | onnxruntime passes | passed here | failed | refused | pass rate |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {len(cases)} | {len(reference)} | {count['pass']} | {count['fail']} | "
        f"{count['refused']} | {rate:.1%} |",
        "",
        "## By operator",
        "",
        "| operator | cases | passed | failed | refused | reasons |",
        "|---|---:|---:|---:|---:|---|",
    ]
    by_op = collections.defaultdict(list)
    for case in reference:
        by_op[case.op].append(case)
    for op in sorted(by_op, key=str.lower):
        members = by_op[op]
        n = collections.Counter(c.status for c in members)
        reasons = collections.Counter(_short(c.reason) for c in members
                                      if c.status in ("fail", "refused"))
        text = "; ".join(f"{r} (×{k})" if k > 1 else r for r, k in reasons.most_common(3))
        lines.append(f"| {op} | {len(members)} | {n['pass']} | {n['fail']} | {n['refused']} | "
                     f"{_cell(text)} |")
    failures = [c for c in reference if c.status == "fail"]
    lines += ["", "## Wrong answers", ""]
    if failures:
        lines += ["| case | operator | max error | what |", "|---|---|---:|---|"]
        lines += [f"| {c.name} | {c.op} | {c.max_error:.3g} | {_cell(c.reason)} |"
                  for c in failures]
    else:
        lines.append("None.")
    lines += ["", "## Refusals by reason", "", "| reason | cases |", "|---|---:|"]
    reasons = collections.Counter(_short(c.reason) for c in reference if c.status == "refused")
    lines += [f"| {_cell(r)} | {k} |" for r, k in reasons.most_common(40)]
    return "\n".join(lines) + "\n"


def _short(reason: str) -> str:
    """A reason without the case's own tensor names and numbers, so alike reasons count as
    one."""
    text = re.sub(r"`[^`]*`", "`…`", reason)
    text = re.sub(r'"[^"]*"', '"…"', text)
    text = re.sub(r"#\d+", "#…", text)
    text = re.sub(r"\b\d+\b", "N", text)
    return text[:160]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--subset", type=int, metavar="N",
                       help="every k-th case by name, N in all (the CI subset)")
    which.add_argument("--all", action="store_true", help="every case")
    parser.add_argument("--write", type=Path, metavar="FILE.md", help="write the table here")
    parser.add_argument("--host", type=Path, default=HOST, help="the wasm-host binary")
    parser.add_argument("--workdir", type=Path, help="keep the packed groups here")
    parser.add_argument("--only", help="a regular expression: the cases whose names match")
    args = parser.parse_args(argv)

    def log(text):
        print(text, file=sys.stderr, flush=True)

    cases = collect()
    if args.only:
        cases = [c for c in cases if re.search(args.only, c.name)]
    if args.subset:
        cases = subset(cases, args.subset)
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
    run(cases, args.host, args.workdir, log)
    command = "python tests/python/onnx_conformance.py " + (
        f"--subset {args.subset}" if args.subset else "--all")
    report = table(cases, command)
    for case in cases:
        if case.status == "fail":
            log(f"FAIL {case.name} ({case.op}): {case.reason}, max error {case.max_error:.3g}")
    print(report.split("## By operator")[0].strip())
    if args.write:
        args.write.write_text(report)
        log(f"wrote {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
