// Plays spoken answers as they stream (response.output_audio.delta: base64 PCM16 little-endian
// mono at 24 kHz) with the Web Audio API: one answer at a time, each chunk scheduled right after
// the one before, so speech starts with an answer's first chunk.
"use strict";

class Speaker {
  constructor(rate = 24000) {
    this.rate = rate;
    this.ctx = null;
    this.nextTime = 0;          // when the next chunk starts, on the context's clock
    this.scheduled = [];        // {item, source, start, duration} not yet ended
    this.heard = new Map();     // item → seconds of its chunks played to the end
    this.current = null;        // the item whose chunks are being scheduled
    this.waiting = new Map();   // item → {buffers, done}: answers that came while one plays
    this.hushed = new Set();    // items stopped: their late chunks are dropped
    this.totalMs = 0;           // all the answer audio scheduled, shown as body[data-audio-ms]
  }

  wake() {  // call it on a click: browsers let a page make sound after a gesture
    this.ctx = this.ctx || new AudioContext({ sampleRate: this.rate });
    return this.ctx.resume();
  }

  play(item, b64) {
    if (this.hushed.has(item)) return;
    this.wake().catch(() => {});
    const buffer = this.decode(b64);
    if (!buffer) return;
    if (this.current === null) this.current = item;
    if (item === this.current) this.schedule(item, buffer);
    else this.queued(item).buffers.push(buffer);
  }

  done(item) {  // the item's audio is complete: the next answer follows it
    if (item !== this.current) {
      if (this.waiting.has(item)) this.waiting.get(item).done = true;
      return;
    }
    this.current = null;
    if (!this.scheduled.some((c) => c.item === item)) this.heard.delete(item);
    for (const [next, queued] of this.waiting) {
      this.waiting.delete(next);
      queued.buffers.forEach((buffer) => this.schedule(next, buffer));
      if (!queued.done) { this.current = next; return; }
    }
  }

  drop(item) {  // stop one item's audio (its response was cancelled); the others play on
    this.hush(item);
    for (const chunk of this.scheduled.filter((c) => c.item === item)) this.silence(chunk);
    this.scheduled = this.scheduled.filter((c) => c.item !== item);
    this.nextTime = Math.max(0, ...this.scheduled.map((c) => c.start + c.duration));
    this.waiting.delete(item);
    this.heard.delete(item);
    if (item === this.current) this.done(item);
  }

  stop() {
    // Everything, at once. Returns [item, ms heard] for each item that was playing or waiting.
    const now = this.ctx ? this.ctx.currentTime : 0;
    const heard = new Map();
    if (this.current !== null) heard.set(this.current, this.heard.get(this.current) || 0);
    for (const chunk of this.scheduled) {
      const played = Math.min(chunk.duration, Math.max(0, now - chunk.start));
      heard.set(chunk.item, (heard.get(chunk.item) ?? this.heard.get(chunk.item) ?? 0) + played);
      this.silence(chunk);
    }
    for (const item of this.waiting.keys()) heard.set(item, 0);
    heard.forEach((_, item) => this.hush(item));
    this.scheduled = [];
    this.heard.clear();
    this.waiting.clear();
    this.current = null;
    this.nextTime = 0;
    return [...heard].map(([item, s]) => [item, Math.round(s * 1000)]);
  }

  // ---- inside ----

  decode(b64) {
    const bytes = atob(b64), n = bytes.length >> 1;
    if (!n) return null;
    const buffer = this.ctx.createBuffer(1, n, this.rate), out = buffer.getChannelData(0);
    for (let i = 0; i < n; i++) {
      const s = bytes.charCodeAt(2 * i) | (bytes.charCodeAt(2 * i + 1) << 8);
      out[i] = (s >= 0x8000 ? s - 0x10000 : s) / 32768;
    }
    return buffer;
  }

  schedule(item, buffer) {
    const source = this.ctx.createBufferSource();
    source.buffer = buffer;
    source.connect(this.ctx.destination);
    const start = Math.max(this.nextTime, this.ctx.currentTime + 0.05);
    const chunk = { item, source, start, duration: buffer.duration };
    source.onended = () => {
      this.scheduled = this.scheduled.filter((c) => c !== chunk);
      this.heard.set(item, (this.heard.get(item) || 0) + chunk.duration);
      if (item !== this.current && !this.scheduled.some((c) => c.item === item)) {
        this.heard.delete(item);  // played to the end
      }
    };
    source.start(start);
    this.nextTime = start + buffer.duration;
    this.scheduled.push(chunk);
    this.totalMs += buffer.duration * 1000;
    document.body.dataset.audioMs = Math.round(this.totalMs);
  }

  silence(chunk) {
    chunk.source.onended = null;
    chunk.source.stop();
  }

  queued(item) {
    if (!this.waiting.has(item)) this.waiting.set(item, { buffers: [], done: false });
    return this.waiting.get(item);
  }

  hush(item) {
    this.hushed.add(item);
    if (this.hushed.size > 256) this.hushed.delete(this.hushed.values().next().value);
  }
}
