#!/usr/bin/env python3
"""Trains dreamdist's demo model from scratch on the procedural scenes (`src/demo/`).

The demo model has the SD 2.x architecture family that dreamdist loads (transformers'
CLIPTextModel with the real CLIP BPE tokenizer and full vocabulary, diffusers'
UNet2DConditionModel with linear projections, diffusers' AutoencoderKL), small enough to
train here and to ship with the page. Phases:

  1. autoencoder   images 32x32 -> latents 4x16x16, until PSNR and the attribute reader on its
                   reconstructions pass their bars (checked on held-out scenes)
  2. latents       posterior means of the training scenes, and the latent scaling factor
  3. diffusion     text encoder + UNet jointly on the captions (v-prediction, Min-SNR-5
                   weighting, 10% empty captions for classifier-free guidance, EMA weights),
                   with a sampled accuracy check (attribute reader) every --check-minutes
  4. export        EMA weights in diffusers layout (text_encoder/, unet/, vae/ + configs)

Everything is seeded; data comes from `dreamdist demo-data` (the one renderer) and the reader
from `dreamdist demo-read`, so Python never re-implements either. The script is resumable:
each phase checkpoints to --work every few minutes and a rerun continues where it stopped.
It prints the wall time of every phase. Run (after `cargo build --release`):

  ~/.cache/dreamdist/venv/bin/python scripts/demo/train_demo.py \
      --dreamdist ~/.cache/dreamdist/target/release/dreamdist --out ~/.cache/dreamdist/demo-model

then `dreamdist convert --from ~/.cache/dreamdist/demo-model --model demo --quant q8 --out assets/demo`.
"""
import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.numpy import load_file as load_np, save_file as save_np
from safetensors.torch import save_file

from diffusers import AutoencoderKL, UNet2DConditionModel, DDIMScheduler
from transformers import CLIPTextConfig, CLIPTextModel

SIDE = 32
HIDDEN = 64

# ----------------------------------------------------------------------------- configurations
# Mirrored by ModelSpec::demo() in src/model/mod.rs (a test checks the exported configs).
TEXT_CONFIG = dict(
    vocab_size=49408, hidden_size=HIDDEN, intermediate_size=4 * HIDDEN, num_hidden_layers=3,
    num_attention_heads=4, max_position_embeddings=77, hidden_act="gelu", layer_norm_eps=1e-5,
    bos_token_id=49406, eos_token_id=49407, pad_token_id=0, projection_dim=HIDDEN,
)
UNET_CONFIG = dict(
    sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64, 128),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=HIDDEN,
    attention_head_dim=(1, 2, 4), use_linear_projection=True, norm_num_groups=32, upcast_attention=False,
)
VAE_CONFIG = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 64), layers_per_block=1,
    latent_channels=4, norm_num_groups=32, sample_size=SIDE,
)
# The SD 2.x training schedule (dreamdist's NoiseSchedule::sd21).
BETAS = (torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float32) ** 2)
ALPHAS_CUMPROD = torch.cumprod(1.0 - BETAS, dim=0)


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Data:
    """Chunks of the demo data set, written by `dreamdist demo-data` on first use."""

    def __init__(self, dreamdist, work, seed, chunk, chunks):
        self.dreamdist, self.work, self.seed, self.chunk, self.chunks = dreamdist, work, seed, chunk, chunks
        os.makedirs(os.path.join(work, "data"), exist_ok=True)

    def path(self, k):
        return os.path.join(self.work, "data", f"seed{self.seed}_chunk{k}_{self.chunk}.safetensors")

    def load(self, k):
        p = self.path(k)
        if not os.path.exists(p):
            tmp = p + ".tmp"
            subprocess.run([self.dreamdist, "demo-data", "--seed", str(self.seed), "--start", str(k * self.chunk),
                            "--n", str(self.chunk), "--out", tmp], check=True)
            os.replace(tmp, p)
        d = load_np(p)
        return d


def to_images(u8):
    """U8 [n,32,32,3] -> float [n,3,32,32] in [-1, 1]."""
    return torch.from_numpy(u8).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_u8(x):
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def read_attrs(dreamdist, images_u8):
    """Runs the attribute reader (`dreamdist demo-read`) on U8 images [n,32,32,3]."""
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "images.safetensors")
        save_np({"images": images_u8}, p)
        out = subprocess.run([dreamdist, "demo-read", "--images", p], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


NAMES = {
    "shape": ["circle", "square", "triangle", "star"],
    "color": ["red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink"],
    "size": ["small", "medium", "large"],
    "position": ["left", "center", "right"],
    "background": ["white", "black", "gray", "blue", "green"],
}


def accuracy(readings, attrs, keys=("shape", "color", "size", "background")):
    idx = {"shape": 0, "color": 1, "size": 2, "position": 3, "background": 4}
    acc = {}
    for k in keys:
        ok = sum(1 for r, a in zip(readings, attrs) if r[k] == NAMES[k][a[idx[k]]])
        acc[k] = ok / len(readings)
    return acc


def lr_at(step, total, peak, warmup):
    if step < warmup:
        return peak * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, p)))


def save_ckpt(path, **state):
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- phase 1
def train_autoencoder(args, data, held):
    ckpt = os.path.join(args.work, "ae.pt")
    torch.manual_seed(args.seed)
    vae = AutoencoderKL(**VAE_CONFIG)
    opt = torch.optim.AdamW(vae.parameters(), lr=args.ae_lr, weight_decay=0.0)
    step, elapsed = 0, 0.0
    if os.path.exists(ckpt):
        st = torch.load(ckpt, weights_only=False)
        vae.load_state_dict(st["model"]); opt.load_state_dict(st["opt"]); step = st["step"]; elapsed = st["elapsed"]
        torch.set_rng_state(st["rng"])
        log(f"autoencoder: resumed at step {step}")
        if st.get("done"):
            return vae, st["elapsed"]
    held_x = to_images(held["images"][:512])
    t0 = time.time() - elapsed
    last_save = time.time()
    chunk_k, chunk = -1, None
    while step < args.ae_steps:
        k = (step * args.ae_batch // data.chunk) % data.chunks
        if k != chunk_k:
            chunk_k, chunk = k, data.load(k)
        off = (step * args.ae_batch) % data.chunk
        x = to_images(chunk["images"][off:off + args.ae_batch])
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.ae_steps, args.ae_lr, 100)
        post = vae.encode(x).latent_dist
        z = post.sample()
        rec = vae.decode(z).sample
        kl = post.kl().mean() / (4 * 16 * 16)
        loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x) + 1e-6 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % 100 == 0 or step == args.ae_steps:
            log(f"autoencoder: step {step}/{args.ae_steps} loss {loss.item():.5f} ({time.time() - t0:.0f} s)")
        if time.time() - last_save > 120:
            save_ckpt(ckpt, model=vae.state_dict(), opt=opt.state_dict(), step=step, elapsed=time.time() - t0,
                      rng=torch.get_rng_state())
            last_save = time.time()
    # Quality bar on held-out scenes.
    vae.eval()
    with torch.no_grad():
        rec = torch.cat([vae.decode(vae.encode(held_x[i:i + 128]).latent_dist.mean).sample
                         for i in range(0, len(held_x), 128)])
    mse = F.mse_loss(rec.clamp(-1, 1), held_x).item()
    psnr = 10 * math.log10(4.0 / mse)
    acc = accuracy(read_attrs(args.dreamdist, to_u8(rec)), held["attrs"][:512])
    log(f"autoencoder: held-out PSNR {psnr:.2f} dB, reader on reconstructions {json.dumps(acc)}")
    ok = psnr >= 28.0 and min(acc.values()) >= 0.95
    if not ok:
        log("autoencoder: below the bar (PSNR >= 28 dB, reader >= 95%): raise --ae-steps and rerun (it resumes)")
        save_ckpt(ckpt, model=vae.state_dict(), opt=opt.state_dict(), step=step, elapsed=time.time() - t0,
                  rng=torch.get_rng_state())
        sys.exit(2)
    elapsed = time.time() - t0
    save_ckpt(ckpt, model=vae.state_dict(), opt=opt.state_dict(), step=step, elapsed=elapsed,
              rng=torch.get_rng_state(), done=True, psnr=psnr, acc=acc)
    return vae, elapsed


# ----------------------------------------------------------------------------- phase 2
def encode_latents(args, vae, data):
    path = os.path.join(args.work, f"latents_{data.chunks}x{data.chunk}.safetensors")
    if os.path.exists(path):
        d = load_np(path)
        # Guard: the cached latents must be what the autoencoder gives for the cached images.
        with torch.no_grad():
            first = vae.encode(to_images(data.load(0)["images"][:8])).latent_dist.mean.numpy()
        err = float(np.abs(first - d["latents"][:8].astype(np.float32)).max())
        if err > 0.05:
            sys.exit(f"latents: {path} does not match the autoencoder (max difference {err:.3f}); delete it and rerun")
        return d["latents"], d["ids"], d["attrs"], float(d["scale"][0])
    lat, ids, attrs = [], [], []
    with torch.no_grad():
        for k in range(data.chunks):
            c = data.load(k)
            for i in range(0, data.chunk, 512):
                x = to_images(c["images"][i:i + 512])
                lat.append(vae.encode(x).latent_dist.mean.numpy().astype(np.float16))
            ids.append(c["ids"]); attrs.append(c["attrs"])
            log(f"latents: chunk {k + 1}/{data.chunks}")
    # `latent_dist.mean` is a strided view and `astype` keeps its layout: safetensors writes the
    # raw buffer, so without the explicit C-contiguous copy the file holds NHWC bytes under an
    # NCHW header (latents silently scrambled on resume; it happened once, see docs/DEMO.md).
    lat = np.ascontiguousarray(np.concatenate(lat)); ids = np.concatenate(ids); attrs = np.concatenate(attrs)
    scale = np.array([1.0 / float(lat.astype(np.float32).std())], dtype=np.float32)
    save_np({"latents": lat, "ids": ids, "attrs": attrs, "scale": scale}, path)
    return lat, ids, attrs, float(scale[0])


# ----------------------------------------------------------------------------- phase 3
def sample_images(args, text, unet, vae, scale, ids, empty_ids, steps=20, guidance=4.0, seed=0):
    sched = DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction",
                          timestep_spacing="leading")
    sched.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    n = len(ids)
    with torch.no_grad():
        cond = text(torch.from_numpy(ids))[0]
        unc = text(torch.from_numpy(np.repeat(empty_ids[None], n, 0)))[0]
        x = torch.randn(n, 4, 16, 16, generator=g)
        ctx = torch.cat([unc, cond])
        for t in sched.timesteps:
            out = unet(torch.cat([x, x]), t, encoder_hidden_states=ctx).sample
            u, c = out.chunk(2)
            x = sched.step(u + guidance * (c - u), t, x).prev_sample
        img = vae.decode(x / scale).sample
    return to_u8(img)


def train_diffusion(args, lat, ids, attrs, scale, empty_ids, vae, held):
    ckpt = os.path.join(args.work, "diffusion.pt")
    torch.manual_seed(args.seed + 1)
    text = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))
    unet = UNet2DConditionModel(**UNET_CONFIG)
    ema_text = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG)); ema_text.load_state_dict(text.state_dict())
    ema_unet = UNet2DConditionModel(**UNET_CONFIG); ema_unet.load_state_dict(unet.state_dict())
    for m in (ema_text, ema_unet):
        m.requires_grad_(False)
    params = list(unet.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-2, betas=(0.9, 0.99))
    step, elapsed, checks = 0, 0.0, []
    rng = np.random.default_rng(args.seed + 2)
    if os.path.exists(ckpt):
        st = torch.load(ckpt, weights_only=False)
        text.load_state_dict(st["text"]); unet.load_state_dict(st["unet"])
        ema_text.load_state_dict(st["ema_text"]); ema_unet.load_state_dict(st["ema_unet"])
        opt.load_state_dict(st["opt"]); step = st["step"]; elapsed = st["elapsed"]; checks = st["checks"]
        torch.set_rng_state(st["rng"]); rng.bit_generator.state = st["np_rng"]
        log(f"diffusion: resumed at step {step}")
        if st.get("done"):
            return ema_text, ema_unet, elapsed, checks
    sqrt_a = ALPHAS_CUMPROD.sqrt()
    sqrt_1ma = (1 - ALPHAS_CUMPROD).sqrt()
    snr = ALPHAS_CUMPROD / (1 - ALPHAS_CUMPROD)
    n = len(lat)
    held_ids = held["ids"][:64]
    t0 = time.time() - elapsed
    last_save, last_check = time.time(), time.time()
    while step < args.steps:
        idx = rng.integers(0, n, args.batch)
        x0 = torch.from_numpy(lat[idx].astype(np.float32)) * scale
        tok = ids[idx].copy()
        drop = rng.random(args.batch) < 0.1
        tok[drop] = empty_ids
        t = torch.from_numpy(rng.integers(0, 1000, args.batch))
        eps = torch.randn_like(x0)
        a = sqrt_a[t].view(-1, 1, 1, 1); s = sqrt_1ma[t].view(-1, 1, 1, 1)
        xt = a * x0 + s * eps
        target = a * eps - s * x0
        for gp in opt.param_groups:
            gp["lr"] = lr_at(step, args.steps, args.lr, 500)
        ctx = text(torch.from_numpy(tok))[0]
        pred = unet(xt, t, encoder_hidden_states=ctx).sample
        w = torch.clamp(snr[t], max=5.0) / (snr[t] + 1.0)  # Min-SNR-5 for v-prediction
        loss = (w * ((pred - target) ** 2).mean(dim=(1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, m in ((ema_text, text), (ema_unet, unet)):
                for pe, pm in zip(e.parameters(), m.parameters()):
                    pe.mul_(decay).add_(pm, alpha=1 - decay)
        if step % 100 == 0:
            log(f"diffusion: step {step}/{args.steps} loss {loss.item():.5f} lr {opt.param_groups[0]['lr']:.2e} "
                f"({time.time() - t0:.0f} s, {step / max(1e-9, time.time() - t0):.2f} steps/s this run)")
        final = step == args.steps
        if time.time() - last_check > args.check_minutes * 60 or final:
            imgs = sample_images(args, ema_text, ema_unet, vae, scale, held_ids, empty_ids)
            acc = accuracy(read_attrs(args.dreamdist, imgs), held["attrs"][:64])
            checks.append({"step": step, "seconds": time.time() - t0, **acc})
            log(f"diffusion: sampled check at step {step} (64 held-out captions, EMA): {json.dumps(acc)}")
            last_check = time.time()
        if time.time() - last_save > 180 or final:
            save_ckpt(ckpt, text=text.state_dict(), unet=unet.state_dict(), ema_text=ema_text.state_dict(),
                      ema_unet=ema_unet.state_dict(), opt=opt.state_dict(), step=step, elapsed=time.time() - t0,
                      checks=checks, rng=torch.get_rng_state(), np_rng=rng.bit_generator.state, done=final)
            last_save = time.time()
    return ema_text, ema_unet, time.time() - t0, checks


# ----------------------------------------------------------------------------- phase 4
def export(args, text, unet, vae, scale, report):
    out = args.out
    for sub in ("text_encoder", "unet", "vae"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    vae.register_to_config(scaling_factor=scale)
    meta = {"format": "pt"}

    def dump(model, path):
        sd = {k: v.detach().contiguous().float() for k, v in model.state_dict().items()}
        save_file(sd, path, metadata=meta)

    dump(text, os.path.join(out, "text_encoder", "model.safetensors"))
    dump(unet, os.path.join(out, "unet", "diffusion_pytorch_model.safetensors"))
    dump(vae, os.path.join(out, "vae", "diffusion_pytorch_model.safetensors"))
    text.config.to_json_file(os.path.join(out, "text_encoder", "config.json"))
    unet.save_config(os.path.join(out, "unet"))
    vae.save_config(os.path.join(out, "vae"))
    with open(os.path.join(out, "training_report.json"), "w") as f:
        json.dump(report, f, indent=1)
    log(f"export: wrote {out}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dreamdist", default=os.path.expanduser("~/.cache/dreamdist/target/release/dreamdist"))
    p.add_argument("--work", default=os.path.expanduser("~/.cache/dreamdist/demo-train"))
    p.add_argument("--out", default=os.path.expanduser("~/.cache/dreamdist/demo-model"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--chunk", type=int, default=16384)
    p.add_argument("--chunks", type=int, default=12)
    p.add_argument("--ae-steps", type=int, default=4500)
    p.add_argument("--ae-batch", type=int, default=32)
    p.add_argument("--ae-lr", type=float, default=1e-3)
    # The defaults are the shipped run's settings: all phases in 1 h 39 min on the idle 2-core machine
    # (docs/DEMO.md), inside the 2-hour budget.
    p.add_argument("--steps", type=int, default=3200)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--check-minutes", type=float, default=10.0)
    p.add_argument("--phase", choices=["all", "autoencoder"], default="all")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    random.seed(args.seed); np.random.seed(args.seed)
    os.makedirs(args.work, exist_ok=True)
    started = time.time()
    data = Data(args.dreamdist, args.work, seed=1, chunk=args.chunk, chunks=args.chunks)
    held = Data(args.dreamdist, args.work, seed=2, chunk=1024, chunks=1).load(0)
    with safe_open(Data(args.dreamdist, args.work, seed=2, chunk=1024, chunks=1).path(0), "np") as f:
        empty_ids = np.array(json.loads(f.metadata()["dreamdist-demo"])["empty_ids"], dtype=np.int64)

    t = time.time()
    vae, ae_seconds = train_autoencoder(args, data, held)
    log(f"phase autoencoder: {ae_seconds:.0f} s of training (this run {time.time() - t:.0f} s wall)")
    if args.phase == "autoencoder":
        return
    vae.requires_grad_(False); vae.eval()
    t = time.time()
    lat, ids, attrs, scale = encode_latents(args, vae, data)
    lat_seconds = time.time() - t
    log(f"phase latents: {lat_seconds:.0f} s ({len(lat)} scenes, scaling factor {scale:.5f})")
    t = time.time()
    text, unet, diff_seconds, checks = train_diffusion(args, lat, ids, attrs, scale, empty_ids, vae, held)
    log(f"phase diffusion: {diff_seconds:.0f} s of training (this run {time.time() - t:.0f} s wall)")
    st = torch.load(os.path.join(args.work, "ae.pt"), weights_only=False)
    report = {
        "versions": {"torch": torch.__version__, "diffusers": __import__("diffusers").__version__,
                     "transformers": __import__("transformers").__version__},
        "args": vars(args), "threads": torch.get_num_threads(),
        "autoencoder": {"seconds": ae_seconds, "steps": args.ae_steps, "psnr": st.get("psnr"), "reader": st.get("acc")},
        "latents": {"seconds": lat_seconds, "scenes": int(len(lat)), "scaling_factor": scale},
        "diffusion": {"seconds": diff_seconds, "steps": args.steps, "checks": checks},
    }
    export(args, text, unet, vae, scale, report)
    log(f"total wall time of this run: {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
