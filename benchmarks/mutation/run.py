"""Mutation testing of the numerics with cosmic-ray: one command, module by module.

    .venv/bin/pip install -c constraints.txt -e ".[test,mutation]"
    .venv/bin/python benchmarks/mutation/run.py                 # modules whose code or tests changed since their last run
    .venv/bin/python benchmarks/mutation/run.py diffusion/formulas.py sdekit/convergence.py   # just these
    .venv/bin/python benchmarks/mutation/run.py --all           # every module of config.toml
    .venv/bin/python benchmarks/mutation/run.py --report        # rewrite REPORT.md from the stored results

Each module of ``config.toml`` is mutated by cosmic-ray (Bingham et al., cosmic-ray 8: one mutant at a
time, written to a copy of the source on disk, so a mutant reaches every way the code runs: Numba-compiled
kernels, generated adapters, decorated functions and module-level coefficient tables) and each mutant runs
the tests that config maps to that module (``-x``: the first failing test kills it). The operators are a lean
set (``exclude-operators``): arithmetic to arithmetic (``+ -``, ``* /``, ``** *``), comparison boundaries
(``< <=``, ``== !=``, ``is`` / ``is not``), sign and ``not`` deletion, added ``not`` on conditions,
``and``/``or``, ``True``/``False``, ``break``/``continue``, zero-iteration loops and every number ``n -> n ± 1``.

The modules run in ``--jobs`` copies of the working tree under ``$TMPDIR/sdekit-mutation`` (two on two
cores), each module's session on one copy. Results go to ``results/<module>.json`` (every mutant: where,
which operator, the diff, killed / survived / equivalent / incompetent) with a fingerprint of the module,
its tests and its config entry: a later run skips a module whose fingerprint is unchanged. ``REPORT.md``
(the score per module, the surviving mutants, the equivalent ones with their reasons) is rewritten after
every run. The score is killed / (total - documented equivalents - incompetent), where ``incompetent`` is
cosmic-ray's name for a mutant that cannot be built (it never runs).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CONFIG = HERE / "config.toml"
RESULTS = HERE / "results"
REPORT = HERE / "REPORT.md"
BIN = Path(sys.executable).parent


def load_config(path: Path = CONFIG) -> dict:
    config = tomllib.loads(path.read_text())
    seen = set()
    for module in config["module"]:
        name = module["path"]
        if name in seen:
            raise ValueError(f"{path}: module {name!r} is listed twice.")
        seen.add(name)
        for p in [name, *module["tests"]]:
            if not (ROOT / p.split("::")[0]).exists():
                raise ValueError(f"{path}: {p!r} (module {name!r}) does not exist.")
    return config


def slug(module: str) -> str:
    return module.replace("/", ".").removesuffix(".py")


def fingerprint(module: dict, settings: dict) -> str:
    """A digest of what decides a module's outcomes: its source, its test files, its config entry and the settings."""
    h = hashlib.blake2b(digest_size=12)
    h.update(json.dumps([module, settings], sort_keys=True).encode())
    files = sorted({module["path"], *(t.split("::")[0] for t in module["tests"]), "tests/conftest.py"})
    for f in files:
        h.update(f.encode())
        h.update((ROOT / f).read_bytes())
    return h.hexdigest()


def copy_tree(dest: Path) -> None:
    """The working tree (tracked and untracked, not ignored files) copied to ``dest`` (its compile cache kept)."""
    if dest.exists():
        for entry in dest.iterdir():
            if entry.name != ".cache":
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True, capture_output=True,
                           text=True).stdout.split()
    for f in files:
        src = ROOT / f
        if src.is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)


def test_command(module: dict, settings: dict) -> str:
    tests = " ".join(module["tests"])
    extra = " ".join(module.get("pytest-args", []))
    return f"{sys.executable} -m pytest {settings['pytest-args']} {extra} {tests}".strip()


def cosmic_ray_config(module: dict, settings: dict) -> str:
    timeout = float(module.get("timeout", settings["timeout"]))
    excluded = json.dumps(settings["exclude-operators"])
    return (f'[cosmic-ray]\nmodule-path = "{module["path"]}"\ntimeout = {timeout}\nexcluded-modules = []\n'
            f"test-command = {json.dumps(test_command(module, settings))}\n"
            f'[cosmic-ray.distributor]\nname = "local"\n'
            f"[cosmic-ray.filters.operators-filter]\nexclude-operators = {excluded}\n")


def run_module(module: dict, settings: dict, copy: Path, log, previous: dict | None, sample: int | None,
               deadline: float = math.inf, equivalents: list[dict] = ()) -> dict:
    """Mutate one module in ``copy`` (a sample of its untested mutants, and its survivors again); its results record.

    At ``deadline`` (a ``time.monotonic()`` value) the run stops: the mutants tested so far are kept, and the record
    is marked incomplete, so that the next run tests the rest (and the survivors again)."""
    work = copy / ".mutation"
    work.mkdir(exist_ok=True)
    name = slug(module["path"])
    cfg, session = work / f"{name}.toml", work / f"{name}.sqlite"
    cfg.write_text(cosmic_ray_config(module, settings))
    session.unlink(missing_ok=True)
    env = {**os.environ, "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "SDEKIT_CACHE_DIR": str(copy / ".cache"), **{k: str(v) for k, v in module.get("env", {}).items()}}
    env.pop("PYTHONPATH", None)
    start = time.perf_counter()

    def call(*argv):
        proc = subprocess.run([str(a) for a in argv], cwd=copy, env=env, capture_output=True, text=True)
        log.write(f"$ {' '.join(map(str, argv))}\n{proc.stdout[-4000:]}{proc.stderr[-4000:]}\n")
        log.flush()
        if proc.returncode != 0:
            raise RuntimeError(f"{module['path']}: `{' '.join(map(str, argv[:2]))}` failed (exit {proc.returncode}); "
                               f"the baseline must pass: {proc.stdout[-2000:]}{proc.stderr[-2000:]}")

    call(BIN / "cosmic-ray", "init", cfg, session)
    call(BIN / "cr-filter-operators", session, cfg)
    source = (copy / module["path"]).read_text().splitlines()
    known = {mutant_key(m): m for m in previous["mutants"]} if previous else {}
    retest = previous is not None and (sample == -1 or previous["fingerprint"] != fingerprint(module, settings))
    if sample is not None and sample >= 0 and "sample" in module:
        sample = min(sample, int(module["sample"]))  # a module whose every mutant recompiles Numba kernels
    mine = [e for e in equivalents if e["module"] in (module["path"], "*")]
    chosen = choose(session, source, known, sample, retest, mine)
    # the baseline, run directly (no time limit: it compiles what the tests use into the copy's cache, which the
    # mutants then share); a mutant is killed only by tests that pass unmutated
    baseline = subprocess.run(test_command(module, settings), shell=True, cwd=copy, env=env, capture_output=True, text=True)
    log.write(f"$ {test_command(module, settings)}\n{baseline.stdout[-3000:]}{baseline.stderr[-3000:]}\n")
    if baseline.returncode != 0:
        raise RuntimeError(f"{module['path']}: its tests fail unmutated, fix them or the config first:\n{baseline.stdout[-2000:]}")
    complete = True
    if time.monotonic() >= deadline:
        complete = False
    else:
        proc = subprocess.Popen([str(BIN / "cosmic-ray"), "exec", str(cfg), str(session)], cwd=copy, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 1.0) if math.isfinite(deadline) else None)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # cosmic-ray and the test run it started
            proc.wait()
            complete = False
        if complete and proc.returncode != 0:
            raise RuntimeError(f"{module['path']}: `cosmic-ray exec` failed (exit {proc.returncode}); see {log.name}")
    seconds = time.perf_counter() - start
    fresh = {mutant_key(m): m for m in read_session(session, source)}
    mutants = {**{k: m for k, m in known.items() if k in chosen["population"]}, **fresh}
    return {"module": module["path"], "fingerprint": fingerprint(module, settings) if complete else "incomplete",
            "seconds": round(seconds, 1),
            "date": datetime.date.today().isoformat(), "test_command": test_command(module, settings),
            "population": len(chosen["population"]), "mutants": sorted(mutants.values(), key=_order)}


def mutant_key(m: dict) -> str:
    """Identifies a mutant across runs while the line it mutates is unchanged: operator, line text, column and the
    operator's occurrence on that line."""
    return f"{m['operator']}|{m['source']}|{m['col']}|{m['nth']}"


def _order(m):
    return (m["line"], m["col"], m["operator"], m["nth"])


def _spec_record(mutation, source):
    row = mutation.start_pos[0]
    return {"line": row, "col": mutation.start_pos[1], "operator": mutation.operator_name, "source": source[row - 1].strip()}


def _numbered(items, source):
    """``(job_id, record)`` of each mutation, ``nth`` counting the same operator at the same column of the same line
    text (a line can repeat in a module, and an operator can make several mutants at one place)."""
    seen, out = {}, []
    for job_id, mutation in items:
        r = _spec_record(mutation, source)
        k = (r["operator"], r["source"], r["col"])
        r["nth"] = seen.get(k, 0)
        seen[k] = r["nth"] + 1
        out.append((job_id, r))
    return out


def choose(session: Path, source: list[str], known: dict, sample: int | None, retest: bool,
           equivalents: list[dict] = ()) -> dict:
    """Leave pending only the mutants this run tests: up to ``sample`` never tested (in a seeded random order, the
    same every run, so that runs continue where the last stopped) and, where the module or its tests changed
    (``retest``), those not killed before and not documented as equivalent (``equivalents``: the config's entries
    for this module); the rest are marked skipped. Returns the keys of the whole population."""
    import random

    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    with use_db(str(session), WorkDB.Mode.open) as db:
        filtered = {job_id for job_id, _ in db.results}  # excluded operators
        items = [(w.job_id, w.mutations[0]) for w in db.work_items if w.job_id not in filtered]
        numbered = _numbered(sorted(items, key=lambda i: (i[1].start_pos, i[1].operator_name, i[1].occurrence)), source)
        population = {mutant_key(r): job_id for job_id, r in numbered}
        assert len(population) == len(numbered), "mutant keys must be unique"
        again = [job for key, job in population.items() if retest and key in known and known[key]["outcome"] != "killed"
                 and not any(_is_equivalent(e, known[key]) for e in equivalents)]
        untested = [job for key, job in population.items() if key not in known]
        random.Random(0).shuffle(untested)
        run = set(again) | set(untested if sample is None else untested[:max(sample, 0)])
        skip = [job for job in population.values() if job not in run]
        db.set_multiple_results(skip, WorkResult(worker_outcome=WorkerOutcome.SKIPPED))
    return {"population": population, "run": run}


def read_session(session: Path, source: list[str]) -> list[dict]:
    """The mutants this run tested, with their outcomes."""
    from cosmic_ray.work_db import WorkDB, use_db

    with use_db(str(session), WorkDB.Mode.open) as db:
        results = dict(db.results)
        items = [(w.job_id, w.mutations[0]) for w in db.work_items]
    numbered = dict(_numbered(sorted(items, key=lambda i: (i[1].start_pos, i[1].operator_name, i[1].occurrence)), source))
    out = []
    for job_id, result in results.items():
        if result.worker_outcome == "skipped":
            continue  # an excluded operator, or not in this run's sample
        outcome = result.test_outcome.value if result.worker_outcome == "normal" else f"error:{result.worker_outcome}"
        out.append({**numbered[job_id], "outcome": outcome, "diff": (result.diff or "")[-1500:],
                    "output": "" if outcome == "killed" else (result.output or "")[-1500:]})
    return out


def _is_equivalent(entry: dict, m: dict) -> bool:
    """Whether the config's ``[[equivalent]]`` entry describes mutant ``m``: the same operator and either the same
    source line (and ``nth``, where given) or, for a rule over every module, a mutated line matching ``diff-pattern``."""
    import re

    if entry["operator"] != m["operator"]:
        return False
    if "diff-pattern" in entry:
        added = [line for line in m["diff"].splitlines() if line.startswith("+") and not line.startswith("+++")]
        return any(re.search(entry["diff-pattern"], line) for line in added)
    return entry["source"] == m["source"] and entry.get("nth", m["nth"]) == m["nth"]


def classify(record: dict, equivalents: list[dict]) -> dict:
    """Counts of a module's outcomes, a mutant listed in ``equivalents`` (module, operator, source line) counted apart."""
    mine = [e for e in equivalents if e["module"] in (record["module"], "*")]
    counts = {"total": 0, "killed": 0, "survived": 0, "equivalent": 0, "incompetent": 0, "error": 0}
    survivors, equivalent = [], []
    for m in record["mutants"]:
        counts["total"] += 1
        match = next((e for e in mine if _is_equivalent(e, m)), None)
        if m["outcome"] == "killed":
            counts["killed"] += 1
        elif match is not None:
            counts["equivalent"] += 1
            equivalent.append((m, match["reason"]))
        elif m["outcome"] == "survived":
            counts["survived"] += 1
            survivors.append(m)
        elif m["outcome"] == "incompetent":
            counts["incompetent"] += 1
        else:
            counts["error"] += 1
            survivors.append(m)
    scored = counts["total"] - counts["equivalent"] - counts["incompetent"]
    counts["score"] = counts["killed"] / scored if scored else 1.0
    return {"counts": counts, "survivors": survivors, "equivalent": equivalent}


STATE = {True: " (partial: run again to finish)", False: " (stale: code or tests changed since)"}


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson's score interval for a proportion ``k / n`` (Wilson 1927, JASA 22, 209): the score's 95 % interval
    when only a random sample of a module's mutants has been tested."""
    if n == 0:
        return 0.0, 1.0
    p, q = k / n, z * z / n
    centre, half = (p + q / 2) / (1 + q), z * ((p * (1 - p) + q / 4) / n) ** 0.5 / (1 + q)
    return max(0.0, centre - half), min(1.0, centre + half)


def write_report(config: dict) -> str:
    records = {}
    for f in sorted(RESULTS.glob("*.json")):
        r = json.loads(f.read_text())
        records[r["module"]] = r
    equivalents = config.get("equivalent", [])
    keys = ("total", "killed", "survived", "equivalent", "incompetent", "error")
    rows, details, totals, population = [], [], dict.fromkeys(keys, 0), 0
    for module in config["module"]:
        r = records.get(module["path"])
        if r is None:
            rows.append(f"| `{module['path']}` | not run | | | | | | |")
            continue
        current = r["fingerprint"] == fingerprint(module, config["settings"])
        c = classify(r, equivalents)
        k = c["counts"]
        for key in keys:
            totals[key] += k[key]
        population += r["population"]
        scored = k["total"] - k["equivalent"] - k["incompetent"]
        lo, hi = wilson(k["killed"], scored)
        interval = "" if k["total"] == r["population"] else f" [{lo:.0%}, {hi:.0%}]"
        rows.append(f"| `{module['path']}` | {r['population']} | {k['total']} | {k['killed']} | {k['survived'] + k['error']} | "
                    f"{k['equivalent']} | {k['score']:.1%}{interval} | "
                    f"{r['date']}{'' if current else STATE[r['fingerprint'] == 'incomplete']} |")
        if c["survivors"]:
            details.append(f"\n### `{module['path']}`: surviving mutants\n")
            details += [f"- line {m['line']} `{m['operator'].removeprefix('core/')}`: `{m['source']}`"
                        f"{' (' + m['outcome'] + ')' if m['outcome'] != 'survived' else ''}" for m in c["survivors"]]
        if c["equivalent"]:
            details.append(f"\n### `{module['path']}`: equivalent mutants\n")
            details += [f"- line {m['line']} `{m['operator'].removeprefix('core/')}`: `{m['source']}`: {reason}"
                        for m, reason in c["equivalent"]]
    scored = totals["total"] - totals["equivalent"] - totals["incompetent"]
    score = totals["killed"] / scored if scored else 1.0
    lo, hi = wilson(totals["killed"], scored)
    text = "\n".join([
        "# Mutation testing report",
        "",
        f"Report of {datetime.date.today().isoformat()}.",
        "",
        "Made by `python benchmarks/mutation/run.py` (cosmic-ray; the modules, the tests each runs and the operators",
        "are in `benchmarks/mutation/config.toml`; see `CONTRIBUTING.md`). *mutants*: the lean operator set's",
        "mutants of the module; *tested*: how many have run (each run tests a seeded random sample of the untested,",
        "so the score of a partly tested module is an estimate, with its 95 % Wilson interval). Score = killed /",
        "(tested − documented equivalents − incompetent). Each row's date is that module's last run.",
        "",
        "| module | mutants | tested | killed | survived | equivalent | score | run |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        f"| **all** | {population} | {totals['total']} | {totals['killed']} | {totals['survived'] + totals['error']} | "
        f"{totals['equivalent']} | **{score:.1%}** [{lo:.0%}, {hi:.0%}] | |",
        "",
        *details,
        "",
    ])
    REPORT.write_text(text)
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*",
                        help="modules of config.toml to run (default: those changed, or with mutants not yet tested)")
    parser.add_argument("--all", action="store_true", help="run every module, changed and complete or not")
    parser.add_argument("--jobs", type=int, default=2, help="copies of the tree working at once (default 2)")
    parser.add_argument("--report", action="store_true", help="only rewrite REPORT.md from the stored results")
    parser.add_argument("--minutes", type=float, default=None,
                        help="stop after this long; the mutants tested so far are kept, the next run goes on")
    parser.add_argument("--survivors", action="store_true",
                        help="test again only the mutants that survived (after adding tests), no untested ones")
    parser.add_argument("--sample", type=int, default=None,
                        help="untested mutants per module this run (default: config's `sample`; 0: all of them)")
    args = parser.parse_args(argv)
    config = load_config()
    settings = config["settings"]
    by_path = {m["path"]: m for m in config["module"]}
    unknown = [m for m in args.modules if m not in by_path]
    if unknown:
        parser.error(f"not in {CONFIG.name}: {unknown}; the modules are {list(by_path)}")
    if args.jobs < 1:
        parser.error("`--jobs` must be >= 1.")
    RESULTS.mkdir(exist_ok=True)
    if not args.report:
        if args.modules:
            todo = [by_path[m] for m in args.modules]
        else:
            todo = []
            for m in config["module"]:
                stored = RESULTS / f"{slug(m['path'])}.json"
                record = json.loads(stored.read_text()) if stored.exists() else None
                if args.survivors:
                    if record is not None and classify(record, config.get("equivalent", []))["survivors"]:
                        todo.append(m)
                elif (args.all or record is None or record["fingerprint"] != fingerprint(m, settings)
                        or len(record["mutants"]) < record["population"]):
                    todo.append(m)
        sample = -1 if args.survivors else None if args.sample == 0 else (args.sample or settings["sample"])
        todo.sort(key=lambda m: -(ROOT / m["path"]).stat().st_size)  # largest first: the copies finish together
        print(f"mutating {len(todo)} module(s) with {args.jobs} copies: {[m['path'] for m in todo]}", flush=True)
        deadline = time.monotonic() + 60.0 * args.minutes if args.minutes else math.inf
        base = Path(tempfile.gettempdir()) / "sdekit-mutation"
        copies = [base / f"copy{i}" for i in range(min(args.jobs, max(len(todo), 1)))]
        for c in copies:
            copy_tree(c)
        free = list(copies)
        log_path = base / "run.log"
        with open(log_path, "a") as log, concurrent.futures.ThreadPoolExecutor(len(copies)) as pool:
            pending = {}
            queue = list(todo)
            failed = []
            while queue or pending:
                if time.monotonic() >= deadline:
                    queue.clear()  # out of time: the modules not started wait for the next run
                while queue and free:
                    m, c = queue.pop(0), free.pop()
                    stored = RESULTS / f"{slug(m['path'])}.json"
                    previous = json.loads(stored.read_text()) if stored.exists() else None
                    pending[pool.submit(run_module, m, settings, c, log, previous, sample, deadline,
                                        config.get("equivalent", []))] = (m, c)
                if not pending:
                    break
                done, _ = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
                for fut in done:
                    m, c = pending.pop(fut)
                    free.append(c)
                    try:
                        record = fut.result()
                    except RuntimeError as err:
                        failed.append(str(err))
                        print(f"FAILED {err}", flush=True)
                        continue
                    (RESULTS / f"{slug(m['path'])}.json").write_text(json.dumps(record, indent=1) + "\n")
                    k = classify(record, config.get("equivalent", []))["counts"]
                    print(f"{m['path']}: {k['killed']}/{k['total']} killed, {k['survived'] + k['error']} survived, "
                          f"{k['equivalent']} equivalent, score {k['score']:.1%} ({record['seconds']:.0f} s)", flush=True)
        print(f"log: {log_path}")
        if failed:
            write_report(config)
            return 1
    print(write_report(config).split("\n\n")[3])
    return 0


if __name__ == "__main__":
    sys.exit(main())
