// The user's distributions, kept in the browser's private storage (OPFS,
// `dreamdist/library/`) so that a reload or a new visit finds them again. Each is its .ddist
// bytes plus {id, name, source, sha256}; index.json lists them in order.

const DIR = ["dreamdist", "library"];

async function dir(create = true) {
  let d = await navigator.storage.getDirectory();
  for (const name of DIR) d = await d.getDirectoryHandle(name, { create });
  return d;
}

async function write(d, name, data) {
  const w = await (await d.getFileHandle(name, { create: true })).createWritable();
  await w.write(data);
  await w.close();
}

/** Hex SHA-256 of bytes (the identity of a distribution file, to avoid duplicates). */
export async function sha256(bytes) {
  const h = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return [...h].map((b) => b.toString(16).padStart(2, "0")).join("");
}

export const library = {
  available() {
    return Boolean(navigator.storage?.getDirectory);
  },

  /** [{id, name, source, sha256, bytes}] in the saved order (unreadable entries are skipped). */
  async load() {
    try {
      const d = await dir(false);
      const index = JSON.parse(await (await (await d.getFileHandle("index.json")).getFile()).text());
      const out = [];
      for (const e of index) {
        try {
          const bytes = new Uint8Array(await (await (await d.getFileHandle(`${e.sha256}.ddist`)).getFile()).arrayBuffer());
          out.push({ ...e, bytes });
        } catch {
          // A missing file: drop the entry.
        }
      }
      return out;
    } catch {
      return [];
    }
  },

  /** Saves the list (entries {id, name, source, sha256, bytes}); files not listed are deleted. */
  async save(entries) {
    const d = await dir();
    const keep = new Set();
    for (const e of entries) {
      keep.add(`${e.sha256}.ddist`);
      try {
        await d.getFileHandle(`${e.sha256}.ddist`);
      } catch {
        await write(d, `${e.sha256}.ddist`, e.bytes);
      }
    }
    await write(d, "index.json", JSON.stringify(entries.map(({ id, name, source, sha256 }) => ({ id, name, source, sha256 }))));
    for await (const name of d.keys()) {
      if (name.endsWith(".ddist") && !keep.has(name)) await d.removeEntry(name).catch(() => {});
    }
  },
};
