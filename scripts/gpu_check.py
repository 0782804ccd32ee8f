"""What `scripts/gpu-check.sh` runs: the embedded model end to end on one device, with numbers.

A short batched generate, a LoRA training run, that adapter merged into the base and generating,
and a chat served by `personalm serve` over HTTP, all on the device (default cuda; `--cpu` is the
dry run the test suite makes, with 2 training steps). Prints one JSON object: tokens/s of each
stage, the served chat's latency, and the peak memory (GPU memory on CUDA, resident memory on the
CPU). Exit 0 when every stage ran; a missing device is one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

from personalm.devices import DEVICE_ENV, describe, resolve_device
from personalm.errors import PersonalmError
from personalm.models.base import SamplingParams
from personalm.models.local import LocalModel
from personalm.models.registry import DEFAULT_MODEL, resolve_local
from personalm.train.loop import TrainConfig, train

PROMPTS = [f"In two sentences, why does a {thing} matter?" for thing in ("river", "library", "bridge", "forest")] * 4


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="dry run on the CPU (2 training steps)")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or mps (ignored with --cpu)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default 20, 2 with --cpu)")
    args = parser.parse_args()
    try:
        device = resolve_device("cpu" if args.cpu else args.device)
    except PersonalmError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    os.environ[DEVICE_ENV] = str(device)  # the trainer and the served model resolve the same device
    steps = args.steps or (2 if args.cpu else 20)
    report: dict = describe(device) | {"torch": torch.__version__}
    base = resolve_local(DEFAULT_MODEL)
    with tempfile.TemporaryDirectory(prefix="personalm-gpu-check-") as tmp:
        work = Path(tmp)
        report["generate"] = _generate(LocalModel(base, device=device))
        report["train"] = _train(work, steps)
        report["merged_generate"] = _generate(LocalModel(base, adapter=work / "adapter", device=device))
        report["served_chat"] = _serve(work / "adapter")
    report["peak_memory_mib"] = _peak_mib(device)
    print(json.dumps(report, indent=2))
    return 0


def _generate(model: LocalModel) -> dict:
    params = SamplingParams(max_tokens=48, temperature=0.0)
    chats = [[{"role": "user", "content": prompt}] for prompt in PROMPTS]
    model.generate(chats[:2], params)  # warm-up
    start = time.perf_counter()
    out = model.generate(chats, params)
    seconds = time.perf_counter() - start
    tokens = sum(g.completion_tokens for g in out)
    if not tokens:
        raise SystemExit(f"error: {model.model_id} generated nothing on {model.device}")
    return {
        "engine": model.info()["engine"],
        "sequences": len(out),
        "tokens": tokens,
        "tok_s": round(tokens / seconds, 1),
    }


def _train(work: Path, steps: int) -> dict:
    data = work / "chats.jsonl"
    with open(data, "w") as handle:
        for prompt in PROMPTS:
            chat = [{"role": "user", "content": prompt}, {"role": "assistant", "content": "It carries life and trade."}]
            handle.write(json.dumps({"messages": chat}) + "\n")
    config = TrainConfig(data=str(data), out=str(work / "adapter"), max_steps=steps, batch_size=4, max_len=96)
    result = train(config, log=lambda message: None)
    return {"steps": result.steps, "tokens": result.tokens, "tok_s": round(result.tokens_per_s, 1)}


def _serve(adapter: Path) -> dict:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "personalm", "serve", "--port", str(port), "--adapter", f"checked={adapter}"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300)
        deadline = time.monotonic() + 300
        while True:
            try:
                if client.get("/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"error: the server did not start: {server.stderr.read().decode()[-1500:]}")
            time.sleep(0.3)
        body = {"model": "checked", "max_tokens": 32, "messages": [{"role": "user", "content": PROMPTS[0]}]}
        client.post("/v1/chat/completions", json=body).raise_for_status()  # warm-up: the engine starts
        start = time.perf_counter()
        response = client.post("/v1/chat/completions", json=body)
        seconds = time.perf_counter() - start
        response.raise_for_status()
        usage = response.json()["usage"]
        return {
            "status": response.status_code,
            "completion_tokens": usage["completion_tokens"],
            "ms": round(seconds * 1e3),
        }
    finally:
        server.terminate()
        server.wait(timeout=60)


def _peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB


if __name__ == "__main__":
    sys.exit(main())
