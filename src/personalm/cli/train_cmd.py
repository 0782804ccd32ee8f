"""`personalm train sft`: LoRA fine-tuning on chat examples."""

from __future__ import annotations

from pathlib import Path

import typer

from personalm.errors import PersonalmError
from personalm.models.registry import DEFAULT_MODEL
from personalm.progress import stderr, training_bar

app = typer.Typer(help="Fine-tune adapters.", no_args_is_help=True)


@app.command("sft")
def sft(
    data: Path = typer.Argument(
        ..., help="JSONL or Parquet with a `messages` column (system/user/assistant turns), optional `persona`."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Adapter directory (PEFT format); checkpoints go inside."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help="Base model (local name or HF directory)."),
    rank: int = typer.Option(16, min=1, help="LoRA rank."),
    alpha: int = typer.Option(32, min=1, help="LoRA alpha."),
    dropout: float = typer.Option(0.05, min=0.0, max=0.9),
    targets: str = typer.Option("all-linear", help="'all-linear' or comma-separated module names (q_proj,v_proj)."),
    lr: float = typer.Option(2e-4, min=0.0),
    epochs: int = typer.Option(1, min=1),
    max_steps: int = typer.Option(None, min=1, help="Train exactly this many optimizer steps (overrides --epochs)."),
    batch_size: int = typer.Option(8, min=1),
    grad_accum: int = typer.Option(1, min=1, help="Micro-batches per optimizer step."),
    max_len: int = typer.Option(512, min=8, help="Longest example in tokens."),
    overlong: str = typer.Option("truncate", help="Longer examples: truncate (documented), drop or error."),
    save_every: int = typer.Option(50, min=1, help="Checkpoint every N steps (a killed run resumes from it)."),
    seed: int = typer.Option(0),
    quant: str = typer.Option("fp32", help="Base weights: fp32, or int8 (4x smaller, int8 forward GEMM)."),
    loss: str = typer.Option(
        "ce",
        help="Loss: ce; perce (PIR-weighted CE; every example needs a 'persona' field); or dpo (rows of "
        "prompt / chosen / rejected message lists, as `soups collect` writes; reference = the base).",
    ),
    clip_min: float = typer.Option(0.8, help="PerCE: lower bound m of the token weights clip(PIR, m, M)."),
    clip_max: float = typer.Option(5.0, help="PerCE: upper bound M of the token weights."),
    beta: float = typer.Option(0.1, help="DPO: strength of the pull towards the reference model."),
    overwrite: bool = typer.Option(False, help="Train again over a finished adapter in OUT."),
) -> None:
    """Train a LoRA adapter; re-run the same command after a kill to resume."""
    import personalm.perce  # noqa: F401 - registers --loss perce (train itself never imports perce)
    from personalm.adapters import is_adapter_dir
    from personalm.train.data import check_overlong, read_examples, read_pairs
    from personalm.train.distributed import launched_rank
    from personalm.train.loop import TrainConfig, train
    from personalm.train.losses import contrast_of, get_loss, needs_pairs

    if quant not in {"fp32", "int8"}:
        raise PersonalmError(f"--quant {quant}: expected fp32 or int8")
    check_overlong(overlong)
    loss_fn = get_loss(loss, clip_min=clip_min, clip_max=clip_max, beta=beta)
    if out.exists() and not out.is_dir():
        raise PersonalmError("not a directory (the adapter is a folder)", source=str(out))
    if is_adapter_dir(out) and not overwrite:
        raise PersonalmError(f"{out}: already holds a finished adapter (pass --overwrite to train again)")
    # Every row is checked here, before the model loads: a bad file costs no model load.
    rows = (
        read_pairs(data)
        if needs_pairs(loss_fn)
        else read_examples(data, require_persona=contrast_of(loss_fn) is not None)
    )
    if not rows:
        raise PersonalmError("no training examples (empty input)", source=str(data))
    config = TrainConfig(
        data=str(data), out=str(out), model=model, rank=rank, alpha=alpha, dropout=dropout, targets=targets, lr=lr,
        epochs=epochs, max_steps=max_steps, batch_size=batch_size, grad_accum=grad_accum, max_len=max_len,
        overlong=overlong, save_every=save_every, seed=seed, quant=quant, loss=loss, clip_min=clip_min,
        clip_max=clip_max, beta=beta,
    )  # fmt: skip
    if launched_rank() > 0:  # one of several processes (torchrun): rank 0 reports
        train(config)
        return
    with training_bar() as progress:
        result = train(config, progress, log=lambda m: stderr.print(m, markup=False))
    stderr.print(
        f"adapter saved to {result.out} ({result.steps} steps, {result.tokens_per_s:.1f} tokens/s, "
        f"final loss {result.losses[-1]:.4f})",
        markup=False,
    )
