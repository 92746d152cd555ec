"""One benchmark candidate in its own Python process, stepped on request (``mfnet.tools.bench``, CPU).

Candidates timed in one process share its heap: a large model's step (r3d_18's training step peaks at 2.6 GB)
leaves the allocator's free lists and trimmed heap in a state where the next candidate's step page-faults its
activations back in (mfnet3d's training step: +50k page faults, 1.5 -> 1.9 s here). A user's process runs one
model, so each candidate gets a process of its own; the rounds stay interleaved (the parent asks each worker for
one step in turn, and the others sleep on their pipe meanwhile), so load from other programs still hits all alike.

Protocol, one JSON object per line: the parent writes the spec (``Candidate`` fields, mode, batch, threads,
num_classes, seed, warmup); the worker prepares and warms up, then answers ``{"ready": {...}}`` (or
``{"error": "..."}``); each further line ``"step"`` is answered with ``{"wall": s, "cpu": s}``; end of input ends it.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict
from typing import IO, Any

from mfnet.errors import MfnetError
from mfnet.tools.bench.candidates import Candidate, cannot_run, prepare_from_spec


class CandidateProcess:
    """A worker process running one candidate; ``step()`` times one step there and returns ``(wall_s, cpu_s)``.

    Raises ``MfnetError`` (with the worker's last error line) if the candidate cannot be prepared or the worker
    dies. Close it with ``close()`` (or use it as a context manager).
    """

    def __init__(self, candidate: Any, **settings: Any) -> None:
        self.label = candidate.label
        self._log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (the worker's stderr; closed in close())
        code = "import torch; from mfnet.tools.bench.worker import serve; serve()"  # a user's order: torch first
        self._proc = subprocess.Popen(
            [sys.executable, "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            bufsize=1,
        )
        try:
            self._send(json.dumps({"candidate": asdict(candidate), **settings}))
            ready = self._receive()
        except BaseException:
            self.close()
            raise
        self.params: int = ready["params"]
        self.macs_per_clip: int = ready["macs_per_clip"]
        self.state_bytes: int = ready["state_bytes"]
        self.setup_s: float = ready["setup_s"]

    def step(self) -> tuple[float, float]:
        """One timed step in the worker: (wall-clock seconds, process CPU seconds)."""
        self._send('"step"')
        answer = self._receive()
        return answer["wall"], answer["cpu"]

    def close(self) -> None:
        """Ends the worker (closing its input) and waits for it."""
        if self._proc.stdin and not self._proc.stdin.closed:
            with contextlib.suppress(OSError):  # it has gone already (unflushed input)
                self._proc.stdin.close()
        try:
            self._proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._proc.stdout:
            self._proc.stdout.close()
        self._log.close()

    def __enter__(self) -> CandidateProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, line: str) -> None:
        try:
            self._proc.stdin.write(line + "\n")  # type: ignore[union-attr]
            self._proc.stdin.flush()  # type: ignore[union-attr]
        except (BrokenPipeError, OSError):
            raise MfnetError(f"{self.label}: the benchmark worker stopped ({self._last_error()})") from None

    def _receive(self) -> dict:
        line = self._proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            self._proc.wait()
            raise MfnetError(f"{self.label}: the benchmark worker stopped ({self._last_error()})")
        answer = json.loads(line)
        if "error" in answer:
            raise MfnetError(answer["error"])
        return answer.get("ready", answer)

    def _last_error(self) -> str:
        self._log.seek(0)
        lines = [ln for ln in self._log.read().splitlines() if ln.strip()]
        return lines[-1].strip() if lines else f"exit status {self._proc.returncode}"


def serve(stdin: IO[str] | None = None) -> None:
    """The worker side: reads the spec, prepares the candidate, then times a step per ``"step"`` line."""
    import time

    reply = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints of libraries go to stderr, not into the protocol
    stdin = stdin or sys.stdin
    spec = json.loads(stdin.readline())
    try:
        item = prepare_from_spec(spec)
        for _ in range(spec["warmup"]):
            item.step()
    except (RuntimeError, ValueError) as err:
        candidate = Candidate(**dict(spec["candidate"], clip_size=tuple(spec["candidate"]["clip_size"])))
        reply.write(json.dumps({"error": cannot_run(candidate, spec["batch"], err)}) + "\n")
        return
    info = {"params": item.params, "macs_per_clip": item.macs_per_clip, "state_bytes": item.state_bytes}
    reply.write(json.dumps({"ready": info | {"setup_s": item.setup_s}}) + "\n")
    for line in stdin:
        if line.strip() != '"step"':
            break
        start, cpu_start = time.perf_counter(), time.process_time()
        item.step()
        reply.write(json.dumps({"wall": time.perf_counter() - start, "cpu": time.process_time() - cpu_start}) + "\n")
