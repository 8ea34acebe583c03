#!/usr/bin/env python3
"""PyTorch / diffusers side of the CPU performance comparison with `dreamdist bench`.

Times the same work as `dreamdist bench --model sd21 --random-weights 0 --what unet,train`
(src/cli/bench.rs) with the reference stack, on the same machine, so that the ratio
dreamdist / torch is reproducible. Nothing is downloaded: the SD 2.1 text encoder, UNet and VAE
are built from their configs (the same dicts as scripts/fixtures/full_size_parity.py) with the
libraries' own random initialisation, seeded (`--seed`), in float32, eval mode, parameters frozen
(`requires_grad_(False)`), no autocast. Attention is the libraries' default: SDPA
(`torch.nn.functional.scaled_dot_product_attention`) in the UNet (diffusers AttnProcessor2_0) and
in the text encoder (transformers attn_implementation "sdpa").

Rows (per image side `size`, latent side `size / 8`), one per dreamdist row:

  "UNet forward (batch 1)"
      UNet(x [1,4,h,w], t = 500, context [1,77,1024]) under `torch.inference_mode()`.
  "UNet fwd + bwd w.r.t. the conditioning"   (dreamdist: "... block-wise bwd ...")
      L = mean(UNet(x, 500, context)^2); dL/dcontext by autograd (weights frozen, so only the
      input gradients are computed). dreamdist computes the same vector-Jacobian product
      block-wise: forward keeping block boundaries only, then each block recomputed under
      autodiff on the way back (activation recomputation, about one extra forward). Torch keeps
      every activation unless `--checkpointing` (diffusers/transformers gradient checkpointing,
      the closest analogue).
  "train step K=32 M=4 S=4 Paper recipe (UNet items per pass 1)"
      One DreamDistribution step of the paper recipe (src/train.rs, Trainer::gradient):
        1. K prompts "<bos> v_1..v_M <eos> <pad>..." (template "{}", pad id 0): token embeddings
           [K,77,1024] whose M slot rows are the learned V [K,M,1024] (spliced in by a forward
           hook on the token embedding, so CLIPTextModel.forward itself runs), through the
           23-layer text encoder -> last_hidden_state c [K,77,1024] (after final_layer_norm);
        2. Gaussian over K per position: mu = mean, sigma = sqrt(max(population var, 1e-20));
           S samples c~ = mu + eps * sigma; L_ortho = sum_{i<j} |cos(f_i, f_j)| / (K(K-1)) over
           the EOS-position features f_k = c[k, 1+M];
        3. one noisy latent (random x0 [1,4,h,w], random t in [0,1000), noise eps), repeated S
           times; L_denoise = mean over items and elements of (UNet(x_t, t, c~) - target)^2 with
           the SD 2.1 (768) v-prediction target; the S items go through the UNet in passes of
           `--unet-batch` items (dreamdist's `--unet-batch`, default 1 in both), each pass
           back-propagated to c~ at once;
        4. back through the samples, mu, sigma (+ 5e-3 * L_ortho) and the text encoder to V, as
           dreamdist does (the surrogate <c~, dL/dc~> + lambda L_ortho), then one Adam step
           (lr 1e-3, torch.optim.Adam).
      The VAE encode of the reference image is not part of the step in either program (dreamdist
      caches the posterior when the trainer is built; here x0 is a random latent).

Timing follows dreamdist's `measure`: one first run (warm-up included), then `--iters` more;
"best" is the minimum over all runs including the first. Peak RSS is the kernel's VmHWM
(/proc/self/status), reset with `echo 5 > /proc/self/clear_refs` before the row's first run, so
it includes everything resident (all three models' weights, Python and libtorch themselves).

Usage (repo root; see scripts/bench/README.md and compare.sh):
  ~/.cache/dreamdist/venv/bin/python scripts/bench/torch_compare.py \
      --sizes 256,512 --what unet,train --iters 1 --threads 2 --out torch.md
  # quick check of the script itself (tiny model of the parity fixtures, seconds):
  ~/.cache/dreamdist/venv/bin/python scripts/bench/torch_compare.py --model tiny --sizes 16
"""

import argparse
import os
import sys
import time

import torch

sys.dont_write_bytecode = True  # no __pycache__ next to the scripts

MAX_LEN = 77
BOS, EOS, PAD = 49406, 49407, 0  # SD 2.x tokenizer: pad is "!" (id 0)

# ---------------------------------------------------------------------------------------------
# Configs (stabilityai/stable-diffusion-2-1, as in scripts/fixtures/full_size_parity.py; "tiny" is
# the architecture of the parity fixtures, scripts/fixtures/make_fixtures.py, for quick checks)
# ---------------------------------------------------------------------------------------------
SD21 = dict(
    text=dict(
        vocab_size=49408,
        hidden_size=1024,
        intermediate_size=4096,
        projection_dim=512,
        num_attention_heads=16,
        num_hidden_layers=23,  # OpenCLIP ViT-H/14 text tower minus its last layer
        max_position_embeddings=77,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
        attention_dropout=0.0,
        dropout=0.0,
        bos_token_id=0,  # the real SD 2.x config's legacy ids (only pooler_output uses them)
        eos_token_id=2,
        pad_token_id=1,
    ),
    unet=dict(
        sample_size=96,
        in_channels=4,
        out_channels=4,
        center_input_sample=False,
        flip_sin_to_cos=True,
        freq_shift=0,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        downsample_padding=1,
        mid_block_scale_factor=1,
        act_fn="silu",
        norm_num_groups=32,
        norm_eps=1e-5,
        cross_attention_dim=1024,
        attention_head_dim=(5, 10, 20, 20),  # number of heads per level (SD 2.x naming quirk)
        use_linear_projection=True,
        upcast_attention=True,
    ),
    vae=dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        act_fn="silu",
        latent_channels=4,
        norm_num_groups=32,
        sample_size=768,
        scaling_factor=0.18215,
    ),
)
TINY = dict(
    text=dict(SD21["text"], hidden_size=32, intermediate_size=64, projection_dim=32, num_attention_heads=4,
              num_hidden_layers=2),
    unet=dict(SD21["unet"], sample_size=8, block_out_channels=(32, 64),
              down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
              attention_head_dim=(2, 4), cross_attention_dim=32),
    vae=dict(SD21["vae"], down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
             block_out_channels=(32, 64), layers_per_block=1, sample_size=16),
)
MODELS = {"sd21": SD21, "tiny": TINY}

# SD 2.1 scheduler: scaled-linear betas 0.00085..0.012 over 1000 steps; the 768 model predicts v.
NUM_TRAIN_TIMESTEPS = 1000
ALPHAS_CUMPROD = torch.cumprod(
    1.0 - torch.linspace(0.00085**0.5, 0.012**0.5, NUM_TRAIN_TIMESTEPS, dtype=torch.float64) ** 2, 0
)


def gib(b):
    return f"{b / 2**30:.2f}"


# ---------------------------------------------------------------------------------------------
# Peak resident memory (the same counters dreamdist reads)
# ---------------------------------------------------------------------------------------------
def reset_peak_rss():
    """Resets VmHWM to the current RSS (Linux clear_refs 5); returns whether it worked."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss():
    """VmHWM in bytes, or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def machine():
    """'N CPUs (nproc), <model name>' from the affinity mask and /proc/cpuinfo."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{n} CPUs (nproc), {model}"


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------
def build(cfg, seed, checkpointing):
    """Text encoder, UNet and VAE with the libraries' random init (seeded), fp32, frozen."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    text = CLIPTextModel(CLIPTextConfig(**cfg["text"]))
    unet = UNet2DConditionModel(**cfg["unet"])
    # The VAE is not used by the timed rows (only by --what sample); it is built so that the
    # resident set matches dreamdist's, which always holds all three networks.
    vae = AutoencoderKL(**cfg["vae"])
    for m in (text, unet, vae):
        m.requires_grad_(False)
        m.eval()
    if checkpointing:
        unet.enable_gradient_checkpointing()
        text.gradient_checkpointing_enable()
        # transformers only checkpoints in training mode; the CLIP text model has no dropout
        # (attention_dropout = dropout = 0), so train() changes nothing else.
        text.train()
    return text, unet, vae


class PromptSplice:
    """Forward hook on the token embedding: replaces rows [1, 1+M) of every prompt by V.

    CLIPTextModel.forward (transformers 5) takes only input_ids; splicing the learned rows into
    the embedding output keeps its own position embeddings, causal mask and final_layer_norm.
    """

    def __init__(self, text, v):
        self.v = v
        self.handle = text.embeddings.token_embedding.register_forward_hook(self)

    def __call__(self, _module, _inputs, out):
        m = self.v.shape[1]
        return torch.cat([out[:, :1], self.v, out[:, 1 + m:]], dim=1)


# ---------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------
class Bench:
    def __init__(self, iters):
        self.iters = iters
        self.rows = []

    def measure(self, what, size, f, iters=None):
        """Runs f once plus `iters` more; records first time, best time (all runs) and peak RSS."""
        iters = self.iters if iters is None else iters
        can_reset = reset_peak_rss()
        t0 = time.perf_counter()
        f()
        first = time.perf_counter() - t0
        best = first
        for _ in range(iters):
            t = time.perf_counter()
            f()
            best = min(best, time.perf_counter() - t)
        rss = peak_rss() if can_reset else None
        row = (what, size, first, best, rss)
        print(f"torch bench: {what} @ {size}²: first {first:.2f} s, best {best:.2f} s, "
              f"peak RSS {gib(rss) if rss is not None else 'n/a'} GiB", file=sys.stderr, flush=True)
        self.rows.append(row)


def bench_unet(b, unet, size, lat, hidden, gen):
    x = torch.randn(1, 4, lat, lat, generator=gen)
    ctx = torch.randn(1, MAX_LEN, hidden, generator=gen)
    t = torch.tensor([500.0])

    def forward():
        with torch.inference_mode():
            out = unet(x, t, encoder_hidden_states=ctx).sample
            out.sum().item()

    def forward_backward():
        c = ctx.clone().requires_grad_(True)
        out = unet(x, t, encoder_hidden_states=c).sample
        loss = out.pow(2).mean()
        (g,) = torch.autograd.grad(loss, c)
        g.sum().item()

    b.measure("UNet forward (batch 1)", size, forward)
    b.measure("UNet fwd + bwd w.r.t. the conditioning", size, forward_backward)


def bench_train(b, text, unet, size, lat, hidden, gen, a):
    k, m, s = a.k, a.m, a.samples
    eos = 1 + m
    ids = torch.full((k, MAX_LEN), PAD, dtype=torch.int64)
    ids[:, 0] = BOS
    ids[:, 1:1 + m] = PAD  # slots: overwritten by V in the embedding hook
    ids[:, eos] = EOS
    v = (torch.randn(k, m, hidden, generator=gen) * 0.02).requires_grad_(True)  # init_prompts, no init word
    opt = torch.optim.Adam([v], lr=a.lr)
    splice = PromptSplice(text, v)
    x0_base = torch.randn(1, 4, lat, lat, generator=gen)  # stands in for the cached VAE posterior
    ub = max(1, min(a.unet_batch, s))

    def step():
        opt.zero_grad(set_to_none=True)
        # 1. text encoder with its graph (gradients flow to V through the hook)
        c = text(input_ids=ids).last_hidden_state  # [K, 77, H]
        # 2. Gaussian over the K prompts, S reparameterised samples, orthogonality loss
        mu = c.mean(0)
        sigma = (c - mu).pow(2).mean(0).clamp_min(1e-20).sqrt()
        omega = torch.randn(s, MAX_LEN, hidden, generator=gen)
        cond = mu + omega * sigma  # [S, 77, H]
        f = c[:, eos]
        f = f / f.norm(dim=1, keepdim=True).clamp_min(1e-12)
        cos = f @ f.T
        ortho = (cos.abs().sum() - cos.diagonal().abs().sum()) / (2 * k * (k - 1))
        # 3. denoising loss on one noisy latent repeated S times, in passes of `ub` items; each
        #    pass back-propagated to the samples at once (like dreamdist's chunked UNet tape)
        t = int(torch.randint(NUM_TRAIN_TIMESTEPS, (1,), generator=gen))
        ac = ALPHAS_CUMPROD[t]
        x0 = x0_base
        eps = torch.randn(1, 4, lat, lat, generator=gen)
        xt = float(ac.sqrt()) * x0 + float((1 - ac).sqrt()) * eps
        target = float(ac.sqrt()) * eps - float((1 - ac).sqrt()) * x0  # v-prediction (SD 2.1 768)
        cond_leaf = cond.detach().requires_grad_(True)
        per = xt.numel()
        for start in range(0, s, ub):
            n = min(ub, s - start)
            out = unet(xt.expand(n, -1, -1, -1), torch.full((n,), float(t)),
                       encoder_hidden_states=cond_leaf[start:start + n]).sample
            (out - target).pow(2).sum().div(per * s).backward()  # accumulates into cond_leaf.grad
        # 4. back through the samples, mu, sigma and the text encoder to V; one Adam step
        surrogate = (cond * cond_leaf.grad).sum() + a.lam * ortho
        surrogate.backward()
        opt.step()
        assert v.grad is not None and torch.isfinite(v).all()

    what = f"train step K={k} M={m} S={s} Paper recipe (UNet items per pass {ub})"
    try:
        b.measure(what, size, step)
    finally:
        splice.handle.remove()


def bench_sample(b, unet, vae, size, lat, hidden, gen):
    ctx = torch.randn(2, MAX_LEN, hidden, generator=gen)
    x = torch.randn(2, 4, lat, lat, generator=gen)
    z = torch.randn(1, 4, lat, lat, generator=gen)
    t = torch.tensor([500.0, 500.0])

    def guided():
        with torch.inference_mode():
            unet(x, t, encoder_hidden_states=ctx).sample.sum().item()

    def decode():
        with torch.inference_mode():
            vae.decode(z).sample.sum().item()

    b.measure("guided denoising step (UNet batch 2)", size, guided, iters=max(b.iters, 2))
    b.measure("VAE decode", size, decode)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="sd21", choices=sorted(MODELS), help="architecture (tiny: quick self-check)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random weights and inputs")
    ap.add_argument("--sizes", default="256,512", help="image sides in pixels, comma-separated")
    ap.add_argument("--what", default="unet,train", help="comma-separated: unet, train, sample")
    ap.add_argument("--iters", type=int, default=1, help="timed repetitions after the first run")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--k", type=int, default=32, help="prompts K")
    ap.add_argument("--m", type=int, default=4, help="learned tokens per prompt M")
    ap.add_argument("--samples", type=int, default=4, help="samples S")
    ap.add_argument("--unet-batch", type=int, default=1, help="training step: UNet items per pass (dreamdist's default 1)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--lam", type=float, default=5e-3, help="weight of the orthogonality loss")
    ap.add_argument("--checkpointing", action="store_true",
                    help="gradient checkpointing in the UNet and text encoder (recomputes like dreamdist)")
    ap.add_argument("--out", help="also write the markdown table to this file")
    a = ap.parse_args()

    sizes = [int(x) for x in a.sizes.split(",") if x]
    what = {w.strip() for w in a.what.split(",") if w.strip()}
    unknown = what - {"unet", "train", "sample"}
    if unknown:
        ap.error(f"unknown --what {sorted(unknown)} (unet, train, sample)")
    cfg = MODELS[a.model]
    down = 2 ** (len(cfg["vae"]["block_out_channels"]) - 1)
    multiple = down * 2 ** (len(cfg["unet"]["block_out_channels"]) - 1)
    for size in sizes:
        if size <= 0 or size % multiple:
            ap.error(f"image size {size} must be a positive multiple of {multiple} for {a.model}")

    torch.set_num_threads(a.threads)
    import diffusers
    import transformers

    t0 = time.perf_counter()
    text, unet, vae = build(cfg, a.seed, a.checkpointing)
    hidden = cfg["text"]["hidden_size"]
    resident = peak_rss()
    attn = {type(p).__name__ for p in unet.attn_processors.values()}
    print(f"torch bench: built {a.model} in {time.perf_counter() - t0:.1f} s, peak RSS "
          f"{gib(resident) if resident else 'n/a'} GiB; UNet attention {', '.join(sorted(attn))}, "
          f"text encoder attention {text.config._attn_implementation}", file=sys.stderr, flush=True)

    b = Bench(a.iters)
    gen = torch.Generator().manual_seed(a.seed + 1)
    for size in sizes:
        lat = size // down
        if "unet" in what:
            bench_unet(b, unet, size, lat, hidden, gen)
        if "train" in what:
            bench_train(b, text, unet, size, lat, hidden, gen, a)
        if "sample" in what:
            bench_sample(b, unet, vae, size, lat, hidden, gen)

    header = (
        f"torch bench: model {a.model} (random weights, seed {a.seed}), fp32, torch {torch.__version__}, "
        f"diffusers {diffusers.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} "
        f"CPU threads (torch.set_num_threads), attention SDPA, "
        f"{'gradient checkpointing' if a.checkpointing else 'no gradient checkpointing'}; "
        f"machine {machine()}; resident after load {gib(resident) if resident else 'n/a'} GiB\n\n"
        f"| what | image | first (s) | best of {a.iters} (s) | peak RSS (GiB) |\n|---|---|---|---|---|\n"
    )
    table = header + "".join(
        f"| {w} | {s}² | {first:.2f} | {best:.2f} | {gib(rss) if rss is not None else 'n/a'} |\n"
        for (w, s, first, best, rss) in b.rows
    )
    print(table, end="")
    if a.out:
        with open(a.out, "w") as f:
            f.write(table)


if __name__ == "__main__":
    main()
