// Audio worklets of the Parley page: the microphone side ("parley-mic")
// turns the capture into 16 kHz mono PCM16 frames; the speaker side
// ("parley-player") plays the PCM16 downlink from a queue that can be flushed
// at once on barge-in. Both run on the audio thread, so neither stalls when
// the page's main thread is busy drawing.
'use strict';

// A windowed-sinc low-pass, so that downsampling does not fold the capture's
// high frequencies into the speech band the recognizer listens to.
function lowpassTaps(cutoff, count) {
  const taps = new Float32Array(count);
  const mid = (count - 1) / 2;
  let sum = 0;
  for (let i = 0; i < count; i++) {
    const x = i - mid;
    const sinc = x === 0 ? 2 * cutoff : Math.sin(2 * Math.PI * cutoff * x) / (Math.PI * x);
    const hamming = 0.54 - 0.46 * Math.cos((2 * Math.PI * i) / (count - 1));
    taps[i] = sinc * hamming;
    sum += taps[i];
  }
  for (let i = 0; i < count; i++) taps[i] /= sum;
  return taps;
}

class MicProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = (options && options.processorOptions) || {};
    this.outRate = opts.targetRate || 16000;
    this.frame = new Int16Array(Math.round((this.outRate * (opts.frameMs || 40)) / 1000));
    this.filled = 0;
    // `sampleRate` is the AudioContext's rate (global in this scope).
    this.step = sampleRate / this.outRate;
    if (this.step > 1) {
      const cutoff = (0.42 * this.outRate) / sampleRate;
      const count = (Math.ceil((3.3 * sampleRate) / (0.16 * this.outRate)) | 1);
      this.taps = lowpassTaps(cutoff, count);
    } else {
      this.taps = new Float32Array([1]);
    }
    this.history = new Float32Array(this.taps.length * 2);
    this.head = 0;
    this.t = 0; // where the next output sample lies, relative to the newest input
    this.prev = 0;
  }

  filter(x) {
    const n = this.taps.length;
    // A doubled ring buffer: the last n inputs are always contiguous.
    this.head = (this.head + 1) % n;
    this.history[this.head] = x;
    this.history[this.head + n] = x;
    let acc = 0;
    const start = this.head + 1;
    for (let k = 0; k < n; k++) acc += this.taps[k] * this.history[start + k];
    return acc;
  }

  emit(value) {
    const v = Math.max(-1, Math.min(1, value));
    this.frame[this.filled++] = v < 0 ? v * 0x8000 : v * 0x7fff;
    if (this.filled === this.frame.length) {
      const out = this.frame;
      // Allocate the next frame first: transferring detaches this one.
      this.frame = new Int16Array(out.length);
      this.filled = 0;
      this.port.postMessage(out.buffer, [out.buffer]);
    }
  }

  process(inputs) {
    const channels = inputs[0];
    if (!channels || channels.length === 0) return true;
    const input = channels[0];
    for (let i = 0; i < input.length; i++) {
      let x = input[i];
      // Mix down whatever the device gives; most give one channel.
      if (channels.length > 1) {
        for (let c = 1; c < channels.length; c++) x += channels[c][i];
        x /= channels.length;
      }
      const y = this.filter(x);
      // Linear interpolation between the last two filtered samples, at the
      // output positions that fall in (previous, current].
      while (this.t <= 0) {
        this.emit(this.prev + (y - this.prev) * (1 + this.t));
        this.t += this.step;
      }
      this.t -= 1;
      this.prev = y;
    }
    return true;
  }
}

class PlayerProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.queue = []; // {samples: Float32Array, rate, rid}
    this.pos = 0; // read position in queue[0], in its own samples
    this.busy = false;
    this.lastRid = null;
    this.port.onmessage = (event) => {
      const msg = event.data;
      if (msg.type === 'push') {
        this.queue.push({ samples: msg.samples, rate: msg.rate, rid: msg.rid });
      } else if (msg.type === 'clear') {
        this.queue = [];
        this.pos = 0;
      }
    };
  }

  sampleAt(index) {
    // The sample `index` positions into the queue, possibly in a later chunk.
    for (let c = 0; c < this.queue.length; c++) {
      const chunk = this.queue[c].samples;
      if (index < chunk.length) return chunk[index];
      index -= chunk.length;
    }
    return null;
  }

  process(_inputs, outputs) {
    const out = outputs[0][0];
    let written = 0;
    while (written < out.length && this.queue.length > 0) {
      const head = this.queue[0];
      if (head.rid !== this.lastRid) {
        this.lastRid = head.rid;
        this.port.postMessage({ type: 'started', rid: head.rid });
      }
      const step = head.rate / sampleRate;
      const chunk = head.samples;
      while (written < out.length && this.pos < chunk.length) {
        const i = Math.floor(this.pos);
        const frac = this.pos - i;
        const a = chunk[i];
        let b = i + 1 < chunk.length ? chunk[i + 1] : this.sampleAt(i + 1);
        if (b === null) b = a;
        out[written++] = a + (b - a) * frac;
        this.pos += step;
      }
      if (this.pos >= chunk.length) {
        this.pos -= chunk.length;
        this.queue.shift();
      }
    }
    for (let i = written; i < out.length; i++) out[i] = 0;
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);
    const busy = this.queue.length > 0;
    if (busy !== this.busy) {
      this.busy = busy;
      this.port.postMessage({ type: busy ? 'busy' : 'idle' });
    }
    return true;
  }
}

registerProcessor('parley-mic', MicProcessor);
registerProcessor('parley-player', PlayerProcessor);
