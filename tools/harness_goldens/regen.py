"""Regenerate the harness's goldens from HF transformers.

    harness-goldens                  # only stale or missing goldens
    harness-goldens --all            # everything
    harness-goldens --case 'llama/*'
    harness-goldens --check          # recompute into a temp dir, diff
    harness-goldens --pending        # write beside the old, for review

The same from a checkout without installing: `tools/.venv/bin/python tools/regen_goldens.py ...`
(or `python -m harness_goldens ...` with the package installed).

The project is found as the harness finds it: the nearest harness.toml in the current directory
or a parent (its `[paths]` name the cases and goldens directories), else the nearest directory
with both cases/ and goldens/; `--root DIR` names it instead. Paths below are the defaults.

With --pending, new goldens go beside the accepted ones (`<tap>.npy.new` and `manifest.json.new`,
models likewise with `provenance.json.new`) and nothing accepted changes; then
`cargo run -p harness-cli -- goldens review` shows how each tap moved and accepts or rejects.

Random models (`source: {random: {seed: N}}`) are built from their config and seed and saved to
goldens/models/<id>/; every case's taps are written to goldens/<case>/<tap>.npy with a
manifest.json holding provenance and hashes. Writes are atomic per directory.

Every model a case uses also gets goldens/models/<id>/structure.json (harness_goldens/structure.py):
its modules, their kinds and axes, its inputs, whether it is causal, measured from HF. Random
models write it with their weights; checkpoints (`path`/`hf`) get it alone. Before anything is
written, the declared class is checked against the config (structure.check_class).

--check ends with `ok: N cases and M models ... reproduced bit for bit` only when every selected
case and model was regenerated and compared. When some could not be (a checkpoint that is not on
disk) it ends with `partial: ...; K unchecked: model X absent (models/X, case, ...; hint: ...)`
and exits 0, or, with CI set, says so as an error and exits 1.

Staleness: a case is stale when its case file, model spec, weights, tap files, or (a checkpoint)
the config, tokenizer and sentence-transformers files it records in `model.files_sha256` changed;
a random model when its spec, weights, structure.json or GGUF files (provenance.json's
`files_sha256`) did.

Each golden directory is written under its lock (store.lock, `<goldens>/.locks/<id>.lock`): a
second run writing the same case says `waiting for another regen of <case> (pid N)` and, once
it has the lock, finds the case fresh. Written files get 0o666 & ~umask.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import os
import sys
import tempfile
from pathlib import Path

from . import gguf_export, hf, store, structure
from .project import Project, ProjectError, find
from .spec import Case, ModelSpec, SpecError, case_id, check_required, discover, expand_taps, files_sha256, gguf_files_sha256, load_case, sha256_bytes, sha256_file


def progress(items, desc: str, quiet: bool):
    if quiet:
        return items
    try:
        from tqdm import tqdm

        return tqdm(items, desc=desc, unit="item", file=sys.stderr, dynamic_ncols=True)
    except ImportError:
        return items


def model_provenance(spec: ModelSpec, model_dir: Path) -> dict:
    """provenance.json of the random model built in `model_dir`. `files_sha256` (the GGUF files,
    so that an edited one is stale) only when the spec has `gguf:`, so that other models'
    provenance.json stay as they were."""
    files = gguf_files_sha256(spec, model_dir)
    return {
        "format": store.FORMAT,
        "model": spec.id,
        "class": spec.family,
        "seed": spec.source["random"]["seed"],
        "spec_digest": spec.digest,
        "weights_sha256": sha256_file(model_dir / "model.safetensors"),
        **({"files_sha256": files} if files else {}),
        "dtype": spec.dtype,
        "generator": {"tool": store.TOOL, **hf.versions()},
    }


def model_is_stale(spec: ModelSpec, d: Path) -> bool:
    prov = store.read_manifest_file(d / "provenance.json")
    weights = d / "model.safetensors"
    if prov is None or not weights.exists() or not (d / "config.json").exists():
        return True
    if any(not (d / f"model.{q}.gguf").exists() for q in spec.gguf):
        return True
    if structure.is_stale(spec, d, d / structure.FILE):
        return True
    if prov.get("files_sha256", {}) != gguf_files_sha256(spec, d):
        return True
    return prov.get("spec_digest") != spec.digest or prov.get("weights_sha256") != sha256_file(weights)


def write_gguf(spec: ModelSpec, d: Path) -> None:
    """The model as GGUF in each type the spec's `gguf:` lists (beside model.safetensors)."""
    if spec.gguf and spec.family != "LlamaForCausalLM":
        raise SpecError(spec.file, "`gguf:` is only supported for LlamaForCausalLM")
    for q in spec.gguf:
        try:
            gguf_export.export(d, q, d / f"model.{q}.gguf", sha256_file(d / "model.safetensors"), spec.id)
        except ValueError as e:
            raise SpecError(spec.file, f"gguf: {e}") from None


def build_model(spec: ModelSpec, final: Path) -> None:
    tmp = store.tmp_sibling(final)
    with store.cleanup_on_error(tmp):
        hf.build_random(spec, tmp)
        write_gguf(spec, tmp)
        structure.write_into(spec, tmp, tmp)
        store.write_files(tmp, {"provenance.json": store.manifest_bytes(model_provenance(spec, tmp))})
        store.honour_umask(tmp)  # safetensors writes model.safetensors 0o600
        store.commit_dir(tmp, final)


def _refused_as_spec_error(case: Case, model, run):
    """`run()`, with HF refusing the case's inputs (a shape its config does not take: an image
    of another size, a spectrogram of another length) reported as an error located at the input,
    not a traceback. Nothing is written: the case's directory is written after its forward."""
    try:
        return run()
    except (ValueError, RuntimeError, IndexError) as e:
        shapes = ", ".join(
            f"{k} {getattr(v, 'dtype', 'int64')} {list(v.shape) if hasattr(v, 'shape') else [len(v), len(v[0]) if v else 0]}"
            for k, v in case.inputs.items()
        )
        main = getattr(model, "main_input_name", None)
        at = f"inputs.{main}" if main in case.inputs else "inputs"
        msg = " ".join(str(e).split()) or type(e).__name__
        raise SpecError(
            case.file,
            f"HF's forward of `{type(model).__name__}` refuses this case's inputs: {type(e).__name__}: {msg} "
            f"(hint: the forward was given {shapes}; check the shapes against the model's config, e.g. its image size or frame count)",
            at=at,
        ) from None


def forward(model, case: Case, taps: list[str], model_dir: Path, dtype=None):
    """The case's forward: (module_order, {tap: array}). Decode cases run the prompt then each
    token with the KV cache, and name everything `{name}@{step}`, step-major. Sentence taps come
    from sentence_transformers after the model's forward (they are not in module_order)."""
    if case.decode is None:
        order, arrays = _refused_as_spec_error(case, model, lambda: hf.run(model, case.inputs, [t for t in taps if t not in hf.SENTENCE_TAPS]))
        wanted = [t for t in taps if t in hf.SENTENCE_TAPS]
        if wanted:
            st = hf.sentence(model_dir, case.text, case.inputs, dtype or hf.torch.float32, case.file)
            arrays.update({t: st[t] for t in wanted})
        return order, arrays
    order, arrays = [], {}
    for k, (o, a) in enumerate(hf.run_decode(model, case.inputs, case.decode, taps)):
        order += [f"{n}@{k}" for n in o]
        arrays.update({f"{n}@{k}": v for n, v in a.items()})
    return order, arrays


def case_files(case: Case, model_dir: Path) -> dict[str, bytes]:
    """Run the reference forward and return every file of the case's golden directory."""
    model = hf.load(case.model, model_dir)
    declared = [n for n, _ in model.named_modules() if n] + hf.named_outputs(model, model_dir)
    modules = expand_taps(case.file, case.taps, declared)
    # The case's inputs against the forward's (what structure.json records): named inputs it
    # takes, and every one it requires.
    check_required(case.file, case.model.family, case.inputs, case.text, structure.forward_inputs(type(model), model.config))
    tokenized = {}
    if case.text is not None:
        tokenized = hf.tokenize(model_dir, case.text, case.tokenizer, case.file)
        case.inputs = {**tokenized, **case.named}
    order, arrays = forward(model, case, modules, model_dir)
    # A glob may match modules that exist but never run (e.g. BERT's attention.self.dropout, whose
    # forward is replaced by a functional call); the Rust side does not list those, so drop them.
    # A tap named literally must run.
    ran = {t.split("@")[0] for t in arrays}
    modules = [m for m in modules if m in ran or m in case.taps]
    taps = list(modules) if case.decode is None else [f"{t}@{k}" for k in range(len(case.decode[0]) + 1) for t in modules]
    never = [t for t in taps if t not in arrays]
    if never:
        raise SpecError(case.file, f"taps {never} did not produce a tensor in the HF forward (module never ran or returned no tensor)")
    repeated = [t for t in taps if order.count(t) > 1]
    if repeated:
        raise SpecError(case.file, f"taps {repeated} run more than once per forward, so their output is ambiguous; tap the modules that use them instead")
    position = {n: i for i, n in reversed(list(enumerate(order)))}
    taps.sort(key=lambda t: position.get(t, len(order)))
    # Text cases: HF's tokenization, compared first (exactly) by the harness.
    for k, v in reversed(list(tokenized.items())):
        taps.insert(0, f"tokenizer.{k}")
        arrays[f"tokenizer.{k}"] = hf.np.array(v, dtype=hf.np.int64)
    # The same forward in float64: how far float32 itself is from the math, per tap (see
    # noise_floor for taps where float64 is not finite).
    _, exact = forward(hf.load(case.model, model_dir, dtype=hf.torch.float64), case, modules, model_dir, hf.torch.float64)
    files: dict[str, bytes] = {}
    entries = []
    for t in taps:
        data = store.npy_bytes(arrays[t])
        fname = f"{t}.npy"
        files[fname] = data
        a = arrays[t]
        entry = {"name": t, "file": fname, "shape": list(a.shape), "dtype": str(a.dtype), "sha256": sha256_bytes(data)}
        noise = noise_floor(case, a, exact[t]) if a.dtype.kind == "f" and t in exact else None
        if noise is not None:
            entry["noise"] = noise
        entries.append(entry)
    manifest = {
        "format": store.FORMAT,
        "case": case.id,
        "case_digest": case.digest,
        "model": {
            "id": case.model.id,
            "class": case.model.family,
            "spec_digest": case.model.digest,
            "weights_sha256": sha256_file(model_dir / "model.safetensors"),
            **({"revision": case.model.revision()} if "hf" in case.model.source else {}),
            # A checkpoint's config, tokenizer and sentence-transformers files (spec.CHECKPOINT_FILES),
            # when it has any: random models' manifests do not have the key.
            **({"files_sha256": deps} if (deps := files_sha256(case.model, model_dir)) else {}),
        },
        "generator": {"tool": store.TOOL, **hf.versions(), "dtype": "float32", "attn_implementation": "eager"},
        "module_order": order,
        "taps": entries,
    }
    if case.named:
        # The named inputs the forward ran on (random, .npy or inline): name, dtype, shape and
        # the sha256 of the array's bytes (C order, little-endian; bool one byte each), sorted by
        # name. Token rows are in the case file itself.
        manifest["inputs"] = [named_input_entry(k, case.named[k]) for k in sorted(case.named)]
    if case.bisect:
        for entry, data in depth_goldens(case, model_dir):
            files[entry["file"]] = data
            entries.append(entry)
    files[store.MANIFEST] = store.manifest_bytes(manifest)
    return files


def named_input_entry(name: str, a) -> dict:
    """A named input as the manifest records it: {name, dtype, shape, sha256 of its bytes}."""
    a = hf.np.ascontiguousarray(a)
    data = a.astype(a.dtype.newbyteorder("<")).tobytes()
    return {"name": name, "dtype": str(a.dtype), "shape": list(a.shape), "sha256": sha256_bytes(data)}


def depth_goldens(case: Case, model_dir: Path):
    """`bisect: true`: the model truncated to k = 1..L layers, its final outputs as taps
    `depth.{k}.{tap}` (last_hidden_state, and logits when the model has them), for the depth
    bisection of outputs-only engines (harness/src/bisect.rs). Each with its noise floor."""
    full = hf.load(case.model, model_dir)
    layers = full.config.num_hidden_layers
    outs = [n for n in ("last_hidden_state", "logits") if n in hf.named_outputs(full)]
    for k in range(1, layers + 1):
        _, arrays = hf.run(hf.load(case.model, model_dir, layers=k), case.inputs, outs)
        _, exact = hf.run(hf.load(case.model, model_dir, dtype=hf.torch.float64, layers=k), case.inputs, outs)
        for t in outs:
            if t not in arrays:
                continue
            data = store.npy_bytes(arrays[t])
            name = f"depth.{k}.{t}"
            a = arrays[t]
            entry = {"name": name, "file": f"{name}.npy", "shape": list(a.shape), "dtype": str(a.dtype), "sha256": sha256_bytes(data)}
            noise = noise_floor(case, a, exact[t]) if t in exact else None
            if noise is not None:
                entry["noise"] = noise
            yield entry, data


def noise_floor(case: Case, f32, f64) -> dict | None:
    """max |f32 - f64|, and the floor used by `noise:` tolerances: never below one float32 ulp
    (2^-23 relative) of the largest golden value, so an exact tap still has a usable unit.
    Measured over the positions the harness compares (padding rows left out). None when the
    float64 run is not finite there: HF's eager softmax casts float64 scores to float32, so a
    fully masked (left-padding) row becomes -inf -> NaN and spreads through the next layers."""
    import numpy as np

    mask = case.inputs.get("attention_mask")
    if mask is not None and not case.raw.get("compare_padding", False):
        real = np.array(mask) != 0
        if f32.ndim >= 3 and f32.shape[:2] == real.shape:
            f32, f64 = f32[real], f64[real]
    if not np.isfinite(f64).all():
        return None
    diff = np.abs(f32.astype(np.float64) - f64.astype(np.float64))
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(f32).max()) if f32.size else 0.0
    return {"max_abs": max_abs, "floor": max(max_abs, scale * 2.0**-23)}


def case_is_stale(case: Case, d: Path, model_dir: Path) -> bool:
    m = store.read_manifest(d)
    if m is None:
        return True
    if m.get("case_digest") != case.digest or m.get("model", {}).get("spec_digest") != case.model.digest:
        return True
    weights = model_dir / "model.safetensors"
    if not weights.exists() or m["model"].get("weights_sha256") != sha256_file(weights):
        return True
    # A checkpoint's config.json, tokenizer and sentence-transformers files, edited, removed or added.
    if m["model"].get("files_sha256", {}) != files_sha256(case.model, model_dir):
        return True
    for e in m.get("taps", []):
        p = d / e["file"]
        if not p.exists() or sha256_file(p) != e["sha256"]:
            return True
    return False


def write_case(case: Case, model_dir: Path, final: Path) -> None:
    files = case_files(case, model_dir)
    tmp = store.tmp_sibling(final)
    with store.cleanup_on_error(tmp):
        store.write_files(tmp, files)
        store.commit_dir(tmp, final)


def build_model_pending(spec: ModelSpec, final: Path, scratch: Path) -> tuple[Path, bool]:
    """Build the model in `scratch` and write it pending beside `final`; returns the directory
    cases must run on (the new model) and whether anything is pending."""
    d = scratch / spec.id
    hf.build_random(spec, d)
    write_gguf(spec, d)
    structure.write_into(spec, d, d)
    store.write_files(d, {"provenance.json": store.manifest_bytes(model_provenance(spec, d))})
    files = {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()}
    return d, store.write_pending(final, files, store.MODEL_MARKER)


def prepare_model(spec: ModelSpec, proj: Project, out_root: Path, scratch: Path | None, args, problems: list, pending: list) -> Path:
    """Build (random) or locate (checkpoint) the model, write its files and structure.json when
    stale (pending / checked as the mode says), and return the directory cases run on."""
    d = out_root / "models" / spec.id
    if spec.is_random:
        if scratch is not None and (args.all or model_is_stale(spec, d)):
            new_dir, is_pending = build_model_pending(spec, d, scratch)
            if is_pending:
                pending.append(f"models/{spec.id}")
            return new_dir
        if args.check or args.all or model_is_stale(spec, d):
            build_model(spec, d)
        if args.check:
            problems += compare_dirs(proj.goldens / "models" / spec.id, d, proj.label(proj.goldens / "models" / spec.id))
        return d
    md = spec.dir(proj)
    if spec.absent(proj) is not None:
        return md  # its cases are skipped (or fail --check) below, saying why
    # A checkpoint: only structure.json is ours, in goldens/models/<id>/ alone.
    if args.check or args.all or structure.is_stale(spec, md, d / structure.FILE):
        data = structure.structure_bytes(structure.record(spec, md))
        if scratch is not None:
            if store.write_pending(d, {structure.FILE: data}, structure.FILE):
                pending.append(f"models/{spec.id}")
        else:
            store.write_file_atomic(d / structure.FILE, data)
    if args.check:
        problems += compare_dirs(proj.goldens / "models" / spec.id, d, proj.label(proj.goldens / "models" / spec.id))
    return md


def compare_dirs(committed: Path, fresh: Path, label: str) -> list[str]:
    problems = []
    names = sorted({p.name for p in committed.glob("*") if p.is_file()} | {p.name for p in fresh.glob("*") if p.is_file()})
    for n in names:
        a, b = committed / n, fresh / n
        if not a.exists():
            problems.append(f"{label}/{n}: missing from the repository (generate it)")
        elif not b.exists():
            problems.append(f"{label}/{n}: in the repository but not produced by the generator")
        elif a.read_bytes() != b.read_bytes():
            problems.append(f"{label}/{n}: differs from a fresh regeneration")
    return problems


def project_of(root: Path | None) -> Project:
    """`--root DIR`'s project, else the one found from the current directory."""
    return Project.at(root) if root is not None else find()


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """The `harness-goldens` command (argv: the arguments, default sys.argv[1:])."""
    try:
        return run(argv, prog)
    except OSError as e:
        # A full disk, a read-only goldens dir: say which file and that nothing was replaced.
        where = f"{e.filename}: " if e.filename else ""
        print(
            f"error: {where}{(e.strerror or str(e)).lower()} (hint: free space or fix permissions and rerun; "
            "goldens already in place were not touched, each directory is swapped in only once complete)",
            file=sys.stderr,
        )
        return 1


def run(argv: list[str] | None = None, prog: str | None = None) -> int:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--all", action="store_true", help="regenerate everything, stale or not")
    ap.add_argument("--case", action="append", metavar="GLOB", help="only cases whose id matches (repeatable)")
    ap.add_argument("--check", action="store_true", help="recompute into a temp dir; exit 1 naming every file that differs; `partial:` (exit 0; 1 with CI set) when some case could not be checked")
    ap.add_argument("--pending", action="store_true", help="write new goldens beside the accepted ones (<file>.new) for `harness goldens review`")
    ap.add_argument("--root", type=Path, help="the project's root (default: the directory of the nearest harness.toml, from the current directory up)")
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    if args.pending and args.check:
        print("error: --pending and --check exclude each other (hint: --check writes nothing)", file=sys.stderr)
        return 2
    ci = os.environ.get("CI", "")
    if not args.check and ci not in ("", "0", "false"):
        print("error: refusing to write goldens with CI set (hint: run --check in CI; regenerate locally and commit)", file=sys.stderr)
        return 2
    try:
        proj = project_of(args.root)
    except ProjectError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not proj.cases.is_dir():
        where = f"check `cases` under `[paths]` in {proj.file}" if proj.file else "create it, or name the project's root with --root DIR"
        print(f"error: {proj.cases}: the cases directory does not exist (hint: {where})", file=sys.stderr)
        return 2

    goldens = proj.goldens
    if not args.check:
        for note in store.recover(goldens):
            print(f"note: {note}", file=sys.stderr)

    models: dict[str, ModelSpec] = {}
    cases: list[Case] = []
    errors = []
    # --check: what was not checked, {reason: [ids]} (cases, and `models/<id>`); ok only when empty.
    unchecked: dict[str, list[str]] = {}
    hints: dict[str, str] = {}
    broken = 0  # selected case files that do not load
    for f in discover(proj):
        try:
            c = load_case(proj, f, models)
        except SpecError as e:
            errors.append(str(e))
            try:
                cid = case_id(proj, f)
            except ValueError:
                cid = str(f)
            if not args.case or any(fnmatch.fnmatchcase(cid, g) for g in args.case):
                unchecked.setdefault("the case file has an error (above)", []).append(cid)
                broken += 1
            continue
        if args.case and not any(fnmatch.fnmatchcase(c.id, g) for g in args.case):
            continue
        if c.reference_engine is not None:
            # Its reference is another engine, run by the harness: there is nothing to generate.
            if args.case:
                print(f"note: {c.id} has no goldens: its reference is engine `{c.reference_engine}`", file=sys.stderr)
            continue
        cases.append(c)
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    if args.case and not cases:
        print(f"error: no case with goldens matches {args.case}", file=sys.stderr)
        return 2

    def not_checked(reason: str, ids: list[str], hint: str | None = None):
        unchecked.setdefault(reason, []).extend(ids)
        if hint:
            hints[reason] = hint

    def cases_of(spec: ModelSpec) -> list[str]:
        return [c.id for c in cases if c.model.id == spec.id]

    # The declared class must fit the config before anything is built or written; a model that
    # does not is reported and its cases are skipped.
    needed: dict[str, ModelSpec] = {}
    for spec in sorted({c.model.id: c.model for c in cases}.values(), key=lambda s: s.id):
        try:
            structure.check_class(spec, None if spec.is_random or spec.absent(proj) else spec.dir(proj))
        except SpecError as e:
            errors.append(str(e))
            print(f"error: {e}", file=sys.stderr)
            not_checked(f"model {spec.id} has an error (above)", [f"models/{spec.id}", *cases_of(spec)])
            continue
        needed[spec.id] = spec
    total = len(cases) + broken
    cases = [c for c in cases if c.model.id in needed]
    out_root = Path(tempfile.mkdtemp(prefix="goldens-check-")) if args.check else goldens
    scratch = Path(tempfile.mkdtemp(prefix="goldens-pending-")) if args.pending else None
    problems = []
    pending = []
    checked_models = checked_cases = 0

    def writing(rel: str):
        """The writer lock of goldens/<rel>: the staleness check and the write happen under it,
        so a run that waited sees what the other wrote. --check writes only to a temp dir."""
        return contextlib.nullcontext() if args.check else store.lock(goldens, rel)

    try:
        model_dirs: dict[str, Path] = {}
        for spec in progress(sorted(needed.values(), key=lambda s: s.id), "models", args.quiet):
            try:
                with writing(f"models/{spec.id}"):
                    d = prepare_model(spec, proj, out_root, scratch, args, problems, pending)
            except SpecError as e:
                errors.append(str(e))
                print(f"error: {e}", file=sys.stderr)
                not_checked(f"model {spec.id} has an error (above)", [f"models/{spec.id}", *cases_of(spec)])
                continue
            model_dirs[spec.id] = d
            why = spec.absent(proj)
            if why is None:
                checked_models += 1
            elif args.check:
                # The harness ignores its cases too; --check must not claim them reproduced.
                print(f"note: not checked: models/{spec.id} and its cases: {why}", file=sys.stderr)
                fetch = why.split("provide it with: ", 1)[1] if "provide it with: " in why else None
                not_checked(f"model {spec.id} absent", [f"models/{spec.id}", *cases_of(spec)], f"provide it with: {fetch}" if fetch else None)
        done = 0
        for case in progress(cases, "cases", args.quiet):
            if case.model.id not in model_dirs:
                continue  # its model failed (reported above)
            final = out_root / case.id
            md = model_dirs[case.model.id]
            why = case.model.absent(proj)
            if why is not None:
                if not args.check:
                    print(f"note: skipped {case.id}: {why}", file=sys.stderr)
                continue  # --check: counted with its model above
            try:
                with writing(case.id):
                    if args.check or args.all or case_is_stale(case, final, md):
                        if args.pending:
                            if store.write_pending(final, case_files(case, md), store.MANIFEST):
                                pending.append(case.id)
                        else:
                            write_case(case, md, final)
                        done += 1
            except SpecError as e:
                errors.append(str(e))
                print(f"error: {e}", file=sys.stderr)
                not_checked("the case has an error (above)", [case.id])
                continue
            if args.check:
                problems += compare_dirs(goldens / case.id, final, proj.label(goldens / case.id))
                checked_cases += 1
    finally:
        import shutil

        if args.check:
            shutil.rmtree(out_root, ignore_errors=True)
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    if args.check:
        return check_summary(problems, errors, unchecked, hints, checked_cases, total, checked_models)
    elif args.pending:
        print(f"regenerated {done} of {len(cases)} cases; {len(pending)} pending: {', '.join(pending) or 'none (nothing changed)'}", file=sys.stderr)
        if pending:
            print("review them: cargo run -p harness -- goldens review", file=sys.stderr)
    else:
        print(f"regenerated {done} of {len(cases)} cases", file=sys.stderr)
    return 1 if errors else 0


def ci_set() -> bool:
    """Whether `CI` is set (to anything but empty, 0 or false), as CI services set it."""
    return os.environ.get("CI", "") not in ("", "0", "false")


def describe_unchecked(unchecked: dict[str, list[str]], hints: dict[str, str], limit: int = 6) -> str:
    """`5 unchecked: model m absent (models/m, a/b, ...; hint: ...); 1 unchecked: ...`, one
    group per reason, each naming what it left unchecked."""
    parts = []
    for reason, ids in unchecked.items():
        shown = ", ".join(ids[:limit]) + (f", and {len(ids) - limit} more" if len(ids) > limit else "")
        hint = f"; hint: {hints[reason]}" if reason in hints else ""
        parts.append(f"{len(ids)} unchecked: {reason} ({shown}{hint})")
    return "; ".join(parts)


def check_summary(problems, errors, unchecked, hints, checked_cases: int, total_cases: int, checked_models: int) -> int:
    """The last lines of --check and its exit code. `ok:` only when every selected case and model
    was regenerated and compared; `partial:` (exit 0) when some could not be, for a reason that is
    not an error (an absent checkpoint), naming them; under CI that is an error (exit 1)."""
    for p in problems:
        print(f"differs: {p}", file=sys.stderr)
    rest = describe_unchecked(unchecked, hints)
    if problems:
        print(f"error: {len(problems)} golden files are not reproduced by the goldens tool (hint: regenerate and commit, or find the nondeterminism)", file=sys.stderr)
        if unchecked:
            print(f"note: besides, {rest}", file=sys.stderr)
        return 1
    what = f"{checked_cases} cases and {checked_models} models (weights and structure.json) reproduced bit for bit"
    if not unchecked and not errors:
        print(f"ok: {what}", file=sys.stderr)
        return 0
    if checked_cases < total_cases:
        what = f"{checked_cases} of {total_cases} cases and {checked_models} models (weights and structure.json) reproduced bit for bit"
    if errors:
        print(f"error: only {what}; {rest}" if unchecked else f"error: {what}, but there were errors (above)", file=sys.stderr)
        return 1
    if ci_set():
        print(f"error: with CI set, a partial check fails: {what}; {rest}", file=sys.stderr)
        return 1
    print(f"partial: {what}; {rest}", file=sys.stderr)
    return 0

if __name__ == "__main__":
    sys.exit(main())
