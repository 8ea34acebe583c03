// Autosave of a training run in the browser's private storage (OPFS, `dreamdist/autosave/`):
// the reference images (once, at the start), the settings, and a checkpoint (.ddist with the
// optimizer state) at least every 50 steps. A closed tab, a crash or a reload loses at most the
// steps since the last checkpoint; the page offers to resume on return.
//
// Layout: session.json ({version, settings, model, images: [{name, file, type}], step, steps,
// checkpoint, savedAt, startedAt}), img-<i>.bin, checkpoint-a.ddist / checkpoint-b.ddist
// (written alternately; session.json names the complete one, so a crash during a write keeps the
// previous checkpoint usable).

const DIR = ["dreamdist", "autosave"];
const VERSION = 1;

async function dir(create = true) {
  let d = await navigator.storage.getDirectory();
  for (const name of DIR) d = await d.getDirectoryHandle(name, { create });
  return d;
}

async function write(d, name, data) {
  const fh = await d.getFileHandle(name, { create: true });
  const w = await fh.createWritable();
  await w.write(data);
  await w.close();
}

async function read(d, name) {
  const fh = await d.getFileHandle(name);
  return new Uint8Array(await (await fh.getFile()).arrayBuffer());
}

export const autosave = {
  available() {
    return Boolean(navigator.storage?.getDirectory);
  },

  /** Starts a new saved session: images and settings (replaces any previous one). */
  async begin({ settings, model, images }) {
    await this.clear();
    const d = await dir();
    const list = [];
    for (let i = 0; i < images.length; i++) {
      const file = `img-${i}.bin`;
      await write(d, file, images[i].bytes);
      list.push({ name: images[i].name, type: images[i].type ?? "", file });
    }
    this.session = { version: VERSION, settings, model, images: list, step: 0, steps: settings.config?.steps ?? settings.steps, checkpoint: null, startedAt: Date.now(), savedAt: Date.now() };
    await write(d, "session.json", JSON.stringify(this.session));
  },

  /** Stores a checkpoint taken after `step`. */
  async checkpoint(step, bytes) {
    if (!this.session) return;
    const d = await dir();
    const file = this.session.checkpoint === "checkpoint-a.ddist" ? "checkpoint-b.ddist" : "checkpoint-a.ddist";
    await write(d, file, bytes);
    this.session = { ...this.session, step, checkpoint: file, savedAt: Date.now() };
    await write(d, "session.json", JSON.stringify(this.session));
  },

  /** The saved session's description (no bytes), or null. */
  async peek() {
    try {
      const d = await dir(false);
      const s = JSON.parse(new TextDecoder().decode(await read(d, "session.json")));
      if (s.version !== VERSION || !Array.isArray(s.images)) return null;
      return s;
    } catch {
      return null;
    }
  },

  /** The saved session with its images and checkpoint bytes, or null. */
  async load() {
    const s = await this.peek();
    if (!s) return null;
    const d = await dir(false);
    const images = [];
    for (const im of s.images) images.push({ name: im.name, type: im.type, bytes: await read(d, im.file) });
    const checkpoint = s.checkpoint ? await read(d, s.checkpoint) : null;
    this.session = s;
    return { ...s, images, checkpointBytes: checkpoint };
  },

  /** Forgets the saved session. */
  async clear() {
    this.session = null;
    try {
      const top = await (await navigator.storage.getDirectory()).getDirectoryHandle(DIR[0]);
      await top.removeEntry(DIR[1], { recursive: true });
    } catch {
      // Nothing saved.
    }
  },
};
