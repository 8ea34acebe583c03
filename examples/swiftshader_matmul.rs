//! How fast burn's matmul runs on a CPU-emulated WebGPU adapter, against two hand-written WGSL
//! kernels on the same wgpu device — the measurement behind docs/WEB.md's "why a training step
//! is slow on SwiftShader".
//!
//! ```sh
//! XDG_RUNTIME_DIR=/tmp VK_ICD_FILENAMES=/usr/lib/chromium/vk_swiftshader_icd.json \
//!   cargo run --release --example swiftshader_matmul
//! ```
//!
//! Any wgpu adapter works (without `VK_ICD_FILENAMES` it is whatever Vulkan driver is
//! installed). Each kernel's best of four runs, upload excluded, readback included; the two WGSL
//! kernels' outputs are checked against burn's.
use std::time::Instant;

use burn::tensor::wgpu::{WgpuSetup, wgpu};
use burn::tensor::{Device, Tensor, TensorData};
use wgpu::util::DeviceExt;

/// One output per invocation, a plain loop over k.
const NAIVE: &str = r#"
@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;
@group(0) @binding(3) var<uniform> dims: vec4<u32>;
@compute @workgroup_size(8, 8, 1)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
  let m = dims.x; let k = dims.y; let n = dims.z;
  let row = g.y; let col = g.x;
  if (row >= m || col >= n) { return; }
  var acc = 0.0;
  for (var i = 0u; i < k; i++) { acc += a[row * k + i] * b[i * n + col]; }
  c[row * n + col] = acc;
}"#;

/// A 4×4 output block per invocation in registers (rows of `b` read as vec4), no workgroup
/// memory and no barriers. Needs n % 4 == 0.
const BLOCK4: &str = r#"
@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> c: array<vec4<f32>>;
@group(0) @binding(3) var<uniform> dims: vec4<u32>;
@compute @workgroup_size(8, 8, 1)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
  let m = dims.x; let k = dims.y; let n4 = dims.z / 4u;
  let r0 = g.y * 4u; let col = g.x;
  if (r0 >= m || col >= n4) { return; }
  let r1 = min(r0 + 1u, m - 1u); let r2 = min(r0 + 2u, m - 1u); let r3 = min(r0 + 3u, m - 1u);
  var c0 = vec4<f32>(0.0); var c1 = vec4<f32>(0.0); var c2 = vec4<f32>(0.0); var c3 = vec4<f32>(0.0);
  for (var i = 0u; i < k; i++) {
    let bv = b[i * n4 + col];
    c0 += a[r0 * k + i] * bv; c1 += a[r1 * k + i] * bv; c2 += a[r2 * k + i] * bv; c3 += a[r3 * k + i] * bv;
  }
  c[r0 * n4 + col] = c0;
  if (r0 + 1u < m) { c[r1 * n4 + col] = c1; }
  if (r0 + 2u < m) { c[r2 * n4 + col] = c2; }
  if (r0 + 3u < m) { c[r3 * n4 + col] = c3; }
}"#;

/// Best time of four runs of a WGSL kernel (each thread covers `block`×`block` outputs, or
/// 1×1), and its output.
fn wgsl(setup: &WgpuSetup, src: &str, a: &[f32], b: &[f32], (m, k, n): (u32, u32, u32), block: u32) -> (f64, Vec<f32>) {
    let dev = &setup.device;
    let init =
        |d: &[u8], usage| dev.create_buffer_init(&wgpu::util::BufferInitDescriptor { label: None, contents: d, usage });
    let bytes = (m * n * 4) as u64;
    let ab = init(bytemuck::cast_slice(a), wgpu::BufferUsages::STORAGE);
    let bb = init(bytemuck::cast_slice(b), wgpu::BufferUsages::STORAGE);
    let dims = init(bytemuck::cast_slice(&[m, k, n, 0u32]), wgpu::BufferUsages::UNIFORM);
    let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
    let cb = dev.create_buffer(&wgpu::BufferDescriptor { label: None, size: bytes, usage, mapped_at_creation: false });
    let usage = wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST;
    let rb = dev.create_buffer(&wgpu::BufferDescriptor { label: None, size: bytes, usage, mapped_at_creation: false });
    let module = dev.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: None,
        source: wgpu::ShaderSource::Wgsl(src.into()),
    });
    let pipe = dev.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: None,
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    });
    let entries: Vec<_> = [&ab, &bb, &cb, &dims]
        .iter()
        .enumerate()
        .map(|(i, buf)| wgpu::BindGroupEntry { binding: i as u32, resource: buf.as_entire_binding() })
        .collect();
    let bg = dev.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipe.get_bind_group_layout(0),
        entries: &entries,
    });
    let (mut best, mut out) = (f64::MAX, Vec::new());
    for _ in 0..4 {
        let t = Instant::now();
        let mut enc = dev.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            pass.set_pipeline(&pipe);
            pass.set_bind_group(0, &bg, &[]);
            pass.dispatch_workgroups((n / block).div_ceil(8), m.div_ceil(block).div_ceil(8), 1);
        }
        enc.copy_buffer_to_buffer(&cb, 0, &rb, 0, bytes);
        setup.queue.submit([enc.finish()]);
        rb.slice(..).map_async(wgpu::MapMode::Read, |_| {});
        dev.poll(wgpu::PollType::wait_indefinitely()).expect("poll");
        out = bytemuck::cast_slice::<u8, f32>(&rb.slice(..).get_mapped_range().expect("mapped")).to_vec();
        rb.unmap();
        best = best.min(t.elapsed().as_secs_f64());
    }
    (best, out)
}

fn main() {
    let (device, setup) = pollster::block_on(Device::wgpu_options().init_with_setup_async()).expect("a wgpu adapter");
    println!("adapter: {} ({:?})\n", setup.adapter.get_info().name, setup.adapter.get_info().backend);
    println!("| m×k·k×n | burn (ms) | burn GFLOP/s | naive WGSL (ms) | 4×4 WGSL (ms) | 4×4 GFLOP/s |");
    println!("|---|---|---|---|---|---|");
    // The demo's text encoder (4 prompts × 77 tokens, width 64, MLP 256) and UNet shapes, and one
    // large square for reference.
    for (m, k, n) in [(308, 64, 256), (308, 256, 64), (2048, 288, 32), (1024, 1024, 1024)] {
        let gflop = 2.0 * (m * k * n) as f64 / 1e9;
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 13) as f32 / 13.0 - 0.5).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 104_729) % 17) as f32 / 17.0 - 0.5).collect();
        let at = Tensor::<2>::from_data(TensorData::new(a.clone(), [m, k]), &device);
        let bt = Tensor::<2>::from_data(TensorData::new(b.clone(), [k, n]), &device);
        let (mut burn_s, mut reference) = (f64::MAX, Vec::new());
        for _ in 0..4 {
            let t = Instant::now();
            // `into_data` is lazy in burn 0.22: the values must be read for the kernel to count.
            reference = at.clone().matmul(bt.clone()).into_data().try_to_vec::<f32>().expect("f32");
            burn_s = burn_s.min(t.elapsed().as_secs_f64());
        }
        let dims = (m as u32, k as u32, n as u32);
        let (naive_s, naive) = wgsl(&setup, NAIVE, &a, &b, dims, 1);
        let (block_s, block) = wgsl(&setup, BLOCK4, &a, &b, dims, 4);
        for (name, out) in [("naive", &naive), ("4x4", &block)] {
            let err = reference.iter().zip(out).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            assert!(err < 1e-3 * k as f32, "{name} differs from burn's matmul by {err}");
        }
        println!(
            "| {m}×{k}·{k}×{n} | {:.1} | {:.2} | {:.1} | {:.1} | {:.2} |",
            burn_s * 1e3,
            gflop / burn_s,
            naive_s * 1e3,
            block_s * 1e3,
            gflop / block_s
        );
    }
}
