// The Parley page: talks to the gateway in Parley's own WebSocket protocol
// (docs/protocol.md), captures the microphone, plays the answer and shows
// what the agent is doing. Plain JS, no build step.
'use strict';

(() => {
  const INPUT_RATE = 16000; // the worklet sends 16 kHz mono PCM16
  const FRAME_MS = 40;
  const VAD_HISTORY = 120; // vad_stats come ~10 per second: 12 s on screen
  const SENT_LOG_MS = 120000; // how far back input offsets map to wall time
  const AWAIT_ANSWER_MS = 20000;
  const SETTING_KEYS = ['silence_ms', 'vad_threshold', 'barge_in', 'min_interrupt_ms', 'early_answer'];
  const HOPS = [
    ['final_transcript', 'transcript'],
    ['first_token', 'first token'],
    ['first_sentence', 'first sentence'],
    ['first_tts_audio', 'first TTS audio'],
    ['first_audio_sent', 'audio sent'],
    ['page_first_audio', 'page: received'],
    ['page_playing', 'page: playing'],
  ];

  const $ = (id) => document.getElementById(id);
  const ui = {
    start: $('start'),
    stop: $('stop'),
    connection: $('connection'),
    state: $('state'),
    errors: $('errors'),
    transcript: $('transcript'),
    hint: $('hint'),
    textForm: $('text-form'),
    text: $('text'),
    send: $('send'),
    vad: $('vad'),
    vadProb: $('vad-prob'),
    vadDb: $('vad-db'),
    settings: $('settings'),
    inForce: $('in-force'),
    sessionId: $('session-id'),
    sessionAudio: $('session-audio'),
  };

  // What the test harness (and a curious developer) can read.
  const exposed = { turns: [], states: [], events: 0, state: 'idle', session: null, send: null };
  window.parley = exposed;
  window.parleyTurns = exposed.turns;

  let ws = null;
  let audio = null; // {ctx, stream, mic, player, sink}
  let ready = false; // session_started seen: audio may flow
  let stopping = false;
  let outputRate = 16000;
  let settingsInForce = null;
  let formDirty = false;

  // Conversation state, derived from the events.
  let userSpeaking = false;
  let awaitingSince = 0; // the user's turn ended and no answer has started yet
  const responses = new Map(); // response_id -> response record
  let audioRid = null; // the response the downlink audio belongs to
  let playerBusy = false;
  const cancelled = new Set();

  // Input offset -> wall time, to time the page's own end of speech.
  let sentMs = 0;
  let sentLog = []; // [end offset ms, performance.now() when sent]

  const vadHistory = [];

  // --- small DOM helpers --------------------------------------------------
  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function scrollDown() {
    ui.transcript.scrollTop = ui.transcript.scrollHeight;
  }

  function showError(text, detail) {
    const item = el('div', 'error');
    item.append(el('span', 'error-text', text));
    if (detail) item.append(el('span', 'error-detail', detail));
    const close = el('button', 'error-close', '×');
    close.type = 'button';
    close.title = 'dismiss';
    close.addEventListener('click', () => item.remove());
    item.append(close);
    ui.errors.append(item);
    while (ui.errors.children.length > 5) ui.errors.firstChild.remove();
  }

  function setConnection(kind, text) {
    ui.connection.dataset.connection = kind;
    ui.connection.textContent = text;
  }

  // --- agent state ----------------------------------------------------------
  const STATE_LABELS = {
    idle: 'idle',
    connecting: 'connecting…',
    listening: 'listening',
    hearing: 'hearing you',
    thinking: 'thinking',
    speaking: 'speaking',
  };

  function deriveState() {
    if (!ws) return 'idle';
    if (!ready) return 'connecting';
    if (userSpeaking) return 'hearing';
    let answering = false;
    let talking = playerBusy;
    for (const r of responses.values()) {
      if (!r.open) continue;
      if (r.ttsStarted) talking = true;
      else answering = true;
    }
    if (talking) return 'speaking';
    if (answering) return 'thinking';
    if (awaitingSince && performance.now() - awaitingSince < AWAIT_ANSWER_MS) return 'thinking';
    return 'listening';
  }

  function refreshState() {
    const state = deriveState();
    if (state === exposed.state) return;
    exposed.state = state;
    exposed.states.push(state);
    if (exposed.states.length > 500) exposed.states.shift();
    ui.state.dataset.state = state;
    ui.state.textContent = STATE_LABELS[state];
  }
  // The "thinking" guard expires on its own when no answer comes.
  setInterval(refreshState, 500);

  // --- the conversation view --------------------------------------------------
  const turnEls = new Map(); // turn_id -> element
  let typedTurn = null; // a typed message's element, waiting for its answer

  function turnEl(turnId) {
    if (ui.hint) {
      ui.hint.remove();
      ui.hint = null;
    }
    if (turnId && turnEls.has(turnId)) return turnEls.get(turnId);
    const node = el('div', 'turn');
    node.dataset.turnId = String(turnId || 0);
    ui.transcript.append(node);
    if (turnId) turnEls.set(turnId, node);
    return node;
  }

  function userBubble(turnId) {
    const turn = turnEl(turnId);
    let bubble = turn.querySelector('.msg.user');
    if (!bubble) {
      bubble = el('div', 'msg user partial');
      bubble.append(el('span', 'who', 'you'), el('span', 'text', '…'));
      turn.prepend(bubble);
    }
    return bubble;
  }

  function setUserText(turnId, text, final) {
    const bubble = userBubble(turnId);
    bubble.querySelector('.text').textContent = text || (final ? '(no words heard)' : '…');
    bubble.classList.toggle('partial', !final);
    bubble.classList.toggle('final', final);
    if (final && !text.trim()) bubble.classList.add('empty');
    scrollDown();
  }

  function responseRecord(rid, turnId) {
    let r = responses.get(rid);
    if (r) return r;
    // Typed turns all have turn_id 0: the answer joins the last typed message.
    const turn = !turnId && typedTurn ? typedTurn : turnEl(turnId);
    if (!turnId) typedTurn = null;
    const bubble = el('div', 'msg agent');
    const body = el('span', 'text');
    const spoken = el('span', 'spoken');
    const pending = el('span', 'pending');
    body.append(spoken, pending);
    bubble.append(el('span', 'who', 'agent'), body, el('span', 'note'));
    bubble.dataset.responseId = rid;
    turn.append(bubble);
    r = {
      rid,
      turnId,
      bubble,
      spoken,
      pending,
      text: '',
      cursor: 0,
      sentences: [],
      open: true,
      ttsStarted: false,
      firstAudioAt: 0,
      playingAt: 0,
      metrics: null,
    };
    responses.set(rid, r);
    // Keep a bounded set of live records.
    if (responses.size > 16) responses.delete(responses.keys().next().value);
    return r;
  }

  function renderAnswer(r) {
    r.spoken.textContent = r.sentences.join(' ');
    r.pending.textContent = r.text.slice(r.cursor).trim() ? ' ' + r.text.slice(r.cursor).trim() : '';
    scrollDown();
  }

  function note(r, text) {
    r.bubble.querySelector('.note').textContent = text;
  }

  // --- latency chart ------------------------------------------------------
  const SVG = 'http://www.w3.org/2000/svg';
  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function drawChart(r) {
    const m = r.metrics;
    if (!m) return;
    const rows = HOPS.filter(([key]) => typeof m.hops[key] === 'number');
    const max = Math.max(1, ...rows.map(([key]) => m.hops[key]));
    const labelW = 112;
    const barW = 190;
    const rowH = 13;
    const height = rows.length * rowH + 20;
    const chart = svg('svg', {
      class: 'latency',
      viewBox: `0 0 360 ${height}`,
      role: 'img',
      'data-turn-id': m.turn_id,
      'aria-label': `latency of turn ${m.turn_id}`,
    });
    chart.append(svg('text', { x: labelW, y: 10, class: 'chart-title' },
      'ms from the end of your speech'));
    let prev = 0;
    rows.forEach(([key, label], i) => {
      const value = m.hops[key];
      const y = 15 + i * rowH;
      const x0 = labelW + (Math.min(prev, value) / max) * barW;
      const x1 = labelW + (value / max) * barW;
      chart.append(svg('text', { x: labelW - 6, y: y + 10, class: 'hop-label', 'text-anchor': 'end' }, label));
      chart.append(svg('rect', { x: labelW, y: y + 2, width: Math.max(0, x0 - labelW), height: rowH - 5, class: 'before' }));
      const bar = svg('rect', {
        x: x0, y: y + 2, width: Math.max(1.5, x1 - x0), height: rowH - 5,
        class: key.startsWith('page_') ? 'hop page' : 'hop',
        'data-hop': key,
      });
      bar.append(svg('title', {}, `${label}: ${Math.round(value)} ms (+${Math.round(value - prev)} ms)`));
      chart.append(bar);
      chart.append(svg('text', { x: labelW + barW + 6, y: y + 10, class: 'hop-value' },
        `${Math.round(value)}`));
      prev = Math.max(prev, value);
    });
    const old = r.bubble.parentNode.querySelector(`svg.latency[data-response-id="${r.rid}"]`);
    chart.setAttribute('data-response-id', r.rid);
    if (old) old.replaceWith(chart);
    else r.bubble.after(chart);
    scrollDown();
  }

  // When the input audio at `offsetMs` left the page (captured just before).
  function wallOfOffset(offsetMs) {
    for (const [end, at] of sentLog) {
      if (end >= offsetMs) return at - (end - offsetMs);
    }
    return null;
  }

  function pageHops(r) {
    const m = r.metrics;
    if (!m) return;
    const eos = wallOfOffset(m.end_of_speech_ms);
    if (eos === null) return;
    if (r.firstAudioAt) m.hops.page_first_audio = Math.round(r.firstAudioAt - eos);
    if (r.playingAt) m.hops.page_playing = Math.round(r.playingAt - eos);
  }

  // --- VAD meter --------------------------------------------------------------
  function drawVad() {
    const canvas = ui.vad;
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth || 320;
    const h = canvas.clientHeight || 80;
    if (canvas.width !== Math.round(w * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(h * dpr);
    }
    const g = canvas.getContext('2d');
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    g.fillStyle = '#f4f6f8';
    g.fillRect(0, 0, w, h);
    const step = w / VAD_HISTORY;
    const start = VAD_HISTORY - vadHistory.length;
    vadHistory.forEach((s, i) => {
      const barH = Math.max(1, s.probability * (h - 4));
      g.fillStyle = s.speaking ? '#2e9d5b' : '#7b93ad';
      g.fillRect((start + i) * step, h - barH, Math.max(1, step - 0.5), barH);
    });
    const threshold = settingsInForce ? settingsInForce.vad_threshold : null;
    if (typeof threshold === 'number') {
      const y = h - threshold * (h - 4);
      g.strokeStyle = '#d0563b';
      g.setLineDash([4, 3]);
      g.beginPath();
      g.moveTo(0, y);
      g.lineTo(w, y);
      g.stroke();
      g.setLineDash([]);
    }
  }

  // --- settings form ----------------------------------------------------------
  function formValues() {
    const f = ui.settings.elements;
    const out = {};
    const silence = parseInt(f.silence_ms.value, 10);
    if (!Number.isNaN(silence)) out.silence_ms = silence;
    const threshold = parseFloat(f.vad_threshold.value);
    if (!Number.isNaN(threshold)) out.vad_threshold = threshold;
    out.barge_in = f.barge_in.checked;
    const minInterrupt = parseInt(f.min_interrupt_ms.value, 10);
    if (!Number.isNaN(minInterrupt)) out.min_interrupt_ms = minInterrupt;
    out.early_answer = f.early_answer.checked;
    return out;
  }

  function showSettings(settings) {
    settingsInForce = settings;
    const f = ui.settings.elements;
    if (!formDirty) {
      f.silence_ms.value = settings.silence_ms;
      f.vad_threshold.value = settings.vad_threshold;
      f.vad_threshold_out.value = Number(settings.vad_threshold).toFixed(2);
      f.barge_in.checked = !!settings.barge_in;
      f.min_interrupt_ms.value = settings.min_interrupt_ms;
      f.early_answer.checked = !!settings.early_answer;
    }
    ui.inForce.textContent = SETTING_KEYS.map((k) => {
      const v = settings[k];
      return `${k}=${typeof v === 'boolean' ? (v ? 'on' : 'off') : v}`;
    }).join(', ');
    ui.inForce.dataset.settings = JSON.stringify(settings);
    drawVad();
  }

  ui.settings.addEventListener('input', () => {
    formDirty = true;
    const f = ui.settings.elements;
    f.vad_threshold_out.value = Number(f.vad_threshold.value).toFixed(2);
  });

  ui.settings.addEventListener('submit', (event) => {
    event.preventDefault();
    if (ready) {
      send({ type: 'settings_update', settings: formValues() });
      formDirty = false;
    } else {
      ui.inForce.textContent = 'will be applied when the session starts';
    }
  });

  // --- WebSocket ----------------------------------------------------------------
  function send(message) {
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(message));
  }

  exposed.send = send; // for a console session: parley.send({type: 'ping'})

  function socketUrl() {
    const page = new URL(window.location.href);
    const url = new URL('/v1/ws', page);
    url.protocol = page.protocol === 'https:' ? 'wss:' : 'ws:';
    const token = page.searchParams.get('token');
    if (token) url.searchParams.set('token', token);
    return url.toString();
  }

  function connect() {
    const url = socketUrl();
    setConnection('connecting', 'connecting');
    ws = new WebSocket(url);
    ws.binaryType = 'arraybuffer';
    const socket = ws;
    socket.addEventListener('message', (event) => {
      if (socket !== ws) return;
      if (typeof event.data === 'string') {
        let msg;
        try {
          msg = JSON.parse(event.data);
        } catch (err) {
          showError('The gateway sent a message that is not JSON', String(err));
          return;
        }
        exposed.events += 1;
        onEvent(msg);
      } else {
        onAudio(event.data);
      }
      refreshState();
    });
    socket.addEventListener('close', (event) => {
      if (socket !== ws) return;
      if (!stopping) {
        if (!ready) {
          showError(
            'Could not open a session with the gateway',
            `${url.replace(/token=[^&]*/, 'token=…')} refused or unreachable` +
              ' (a gateway with auth_token needs ?token=… in the page address)',
          );
        } else {
          showError('The connection to the gateway closed',
            `code ${event.code}${event.reason ? ': ' + event.reason : ''}`);
        }
      }
      teardown();
    });
  }

  function onEvent(msg) {
    switch (msg.type) {
      case 'session_started': {
        ready = true;
        exposed.session = msg;
        outputRate = msg.output_sample_rate;
        setConnection('open', 'connected');
        ui.sessionId.textContent = msg.session_id;
        ui.sessionAudio.textContent = `in ${INPUT_RATE} Hz (mic off), out ${outputRate} Hz`;
        showSettings(msg.settings);
        const settings = { vad_stats: true, ...(formDirty ? formValues() : {}) };
        formDirty = false;
        send({ type: 'settings_update', input_sample_rate: INPUT_RATE, settings });
        ui.text.disabled = false;
        ui.send.disabled = false;
        if (audio) openMic().catch(micFailed);
        break;
      }
      case 'settings_updated':
        outputRate = msg.output_sample_rate;
        showSettings(msg.settings);
        break;
      case 'user_speech_start':
        userSpeaking = true;
        userBubble(msg.turn_id);
        break;
      case 'user_speech_end':
        userSpeaking = false;
        awaitingSince = performance.now();
        break;
      case 'transcription':
        setUserText(msg.turn_id, msg.text, msg.final);
        if (msg.final && !msg.text.trim()) awaitingSince = 0;
        break;
      case 'processing': {
        const r = [...responses.values()].reverse().find((x) => x.open);
        if (r) note(r, `${msg.stage}: ${msg.detail || 'working'}…`);
        break;
      }
      case 'response_start':
        awaitingSince = 0;
        responseRecord(msg.response_id, msg.turn_id);
        break;
      case 'response_text': {
        const r = responses.get(msg.response_id);
        if (!r) break;
        r.text += msg.delta;
        renderAnswer(r);
        break;
      }
      case 'response_sentence': {
        const r = responses.get(msg.response_id);
        if (!r) break;
        r.sentences[msg.index] = msg.text;
        const at = r.text.indexOf(msg.text, r.cursor);
        if (at >= 0) r.cursor = at + msg.text.length;
        renderAnswer(r);
        break;
      }
      case 'response_end': {
        const r = responses.get(msg.response_id);
        if (!r) break;
        r.bubble.dataset.status = msg.status;
        if (msg.status === 'completed') {
          // The whole answer is final now, spoken or not.
          if (msg.text && !r.sentences.filter(Boolean).length) r.sentences = [msg.text];
          else if (r.text.slice(r.cursor).trim()) r.sentences.push(r.text.slice(r.cursor).trim());
          r.cursor = r.text.length;
          renderAnswer(r);
        } else {
          r.open = false;
          r.bubble.classList.add(msg.status);
          note(r, msg.status === 'cancelled' ? 'interrupted' : 'failed');
          r.pending.textContent = '';
        }
        break;
      }
      case 'tts_start': {
        const r = responseRecord(msg.response_id, 0);
        r.ttsStarted = true;
        audioRid = msg.response_id;
        outputRate = msg.sample_rate || outputRate;
        break;
      }
      case 'tts_end': {
        const r = responses.get(msg.response_id);
        if (r) r.open = false;
        break;
      }
      case 'playback_cleared': {
        cancelled.add(msg.response_id);
        if (audio) audio.player.port.postMessage({ type: 'clear' });
        const r = responses.get(msg.response_id);
        if (r) {
          r.open = false;
          note(r, 'interrupted');
          r.bubble.classList.add('cancelled');
        }
        break;
      }
      case 'turn_metrics': {
        const r = responses.get(msg.response_id) || responseRecord(msg.response_id, msg.turn_id);
        r.metrics = {
          turn_id: msg.turn_id,
          response_id: msg.response_id,
          end_of_speech_ms: msg.end_of_speech_ms,
          hops: { ...msg.hops },
        };
        pageHops(r);
        exposed.turns.push(r.metrics);
        drawChart(r);
        break;
      }
      case 'vad_stats':
        vadHistory.push(msg);
        if (vadHistory.length > VAD_HISTORY) vadHistory.shift();
        ui.vadProb.textContent = msg.probability.toFixed(2);
        ui.vadDb.textContent = `${Math.round(msg.energy_db)} dB`;
        drawVad();
        break;
      case 'error': {
        const where = msg.stage ? `${msg.stage}` : 'gateway';
        showError(`${where}: ${msg.code}`, msg.message);
        if (msg.turn_id) awaitingSince = 0;
        const r = msg.response_id && responses.get(msg.response_id);
        if (r) note(r, `${msg.stage} failed: ${msg.code}`);
        break;
      }
      case 'session_end':
        showError('The agent ended the conversation', msg.reason || '');
        break;
      case 'pong':
        break;
      default:
        break;
    }
  }

  function onAudio(buffer) {
    if (!audio || !audioRid || cancelled.has(audioRid)) return;
    const r = responses.get(audioRid);
    if (r && !r.firstAudioAt) r.firstAudioAt = performance.now();
    const pcm = new Int16Array(buffer);
    const samples = new Float32Array(pcm.length);
    for (let i = 0; i < pcm.length; i++) samples[i] = pcm[i] / 0x8000;
    audio.player.port.postMessage(
      { type: 'push', rid: audioRid, rate: outputRate, samples },
      [samples.buffer],
    );
  }

  function onMicFrame(buffer) {
    if (!ready || !ws || ws.readyState !== WebSocket.OPEN) return;
    ws.send(buffer);
    sentMs += (buffer.byteLength / 2 / INPUT_RATE) * 1000;
    const now = performance.now();
    sentLog.push([sentMs, now]);
    while (sentLog.length && sentLog[0][0] < sentMs - SENT_LOG_MS) sentLog.shift();
  }

  function onPlayer(msg) {
    if (msg.type === 'started') {
      const r = responses.get(msg.rid);
      if (r && !r.playingAt) {
        r.playingAt = performance.now() + 1000 * (audio ? audio.ctx.outputLatency || audio.ctx.baseLatency || 0 : 0);
        if (r.metrics) {
          pageHops(r);
          drawChart(r);
        }
      }
    } else if (msg.type === 'busy' || msg.type === 'idle') {
      playerBusy = msg.type === 'busy';
    }
    refreshState();
  }

  // --- audio ------------------------------------------------------------------
  // The speaker side, on the Start click (browsers start audio on a gesture).
  async function openAudio() {
    if (!window.isSecureContext || !window.AudioWorkletNode) {
      throw new Error('audio needs a secure page: open it on https:// or http://localhost');
    }
    const ctx = new AudioContext({ latencyHint: 'interactive' });
    try {
      await ctx.resume();
      await ctx.audioWorklet.addModule('/static/mic-worklet.js');
      const player = new AudioWorkletNode(ctx, 'parley-player', {
        numberOfInputs: 0,
        numberOfOutputs: 1,
        outputChannelCount: [1],
      });
      player.port.onmessage = (event) => onPlayer(event.data);
      player.connect(ctx.destination);
      audio = { ctx, player, stream: null, mic: null };
    } catch (err) {
      ctx.close().catch(() => {});
      throw err;
    }
  }

  // The microphone, once the session is there: what is said before would be lost.
  async function openMic() {
    const current = audio;
    if (!current) throw new Error('no audio output');
    if (!navigator.mediaDevices) throw new Error('this page has no access to media devices');
    const stream = await navigator.mediaDevices.getUserMedia({
      audio: {
        channelCount: 1,
        echoCancellation: true,
        noiseSuppression: true,
        autoGainControl: true,
      },
    });
    if (audio !== current) {
      // Stopped while the browser asked for permission.
      stream.getTracks().forEach((t) => t.stop());
      return;
    }
    current.stream = stream;
    const { ctx } = current;
    const source = ctx.createMediaStreamSource(stream);
    const mic = new AudioWorkletNode(ctx, 'parley-mic', {
      numberOfInputs: 1,
      numberOfOutputs: 1,
      processorOptions: { targetRate: INPUT_RATE, frameMs: FRAME_MS },
    });
    mic.port.onmessage = (event) => onMicFrame(event.data);
    // A silent path to the destination keeps the node pulled in every browser.
    const mute = ctx.createGain();
    mute.gain.value = 0;
    source.connect(mic).connect(mute).connect(ctx.destination);
    current.mic = mic;
    ui.sessionAudio.textContent =
      `in ${INPUT_RATE} Hz (mic ${ctx.sampleRate} Hz), out ${outputRate} Hz`;
  }

  function micFailed(err) {
    // Without a microphone the page still works with typed messages.
    showError('No microphone: typed messages only', err && err.message ? err.message : String(err));
  }

  function closeAudio() {
    if (!audio) return;
    if (audio.stream) audio.stream.getTracks().forEach((t) => t.stop());
    audio.ctx.close().catch(() => {});
    audio = null;
  }

  // --- start / stop -------------------------------------------------------------
  async function start() {
    ui.start.disabled = true;
    ui.stop.disabled = false;
    stopping = false;
    ready = false;
    sentMs = 0;
    sentLog = [];
    // A new session numbers its turns from 1 again: earlier blocks stay on
    // screen but are not written to any more.
    turnEls.clear();
    responses.clear();
    cancelled.clear();
    typedTurn = null;
    if (ui.transcript.querySelector('.turn')) {
      ui.transcript.append(el('div', 'session-break', 'new session'));
    }
    refreshState();
    try {
      await openAudio();
    } catch (err) {
      micFailed(err);
    }
    if (stopping) {
      closeAudio();
      return;
    }
    connect();
    refreshState();
  }

  function teardown() {
    ready = false;
    ws = null;
    userSpeaking = false;
    awaitingSince = 0;
    playerBusy = false;
    audioRid = null;
    for (const r of responses.values()) r.open = false;
    closeAudio();
    setConnection('idle', 'not connected');
    ui.start.disabled = false;
    ui.stop.disabled = true;
    ui.text.disabled = true;
    ui.send.disabled = true;
    refreshState();
  }

  function stop() {
    stopping = true;
    if (ws) {
      send({ type: 'session_end' });
      const socket = ws;
      // The server closes after session_end; do not wait on it.
      setTimeout(() => socket.close(1000, 'stopped'), 200);
    }
    teardown();
  }

  ui.start.addEventListener('click', () => {
    start();
  });
  ui.stop.addEventListener('click', stop);
  ui.textForm.addEventListener('submit', (event) => {
    event.preventDefault();
    const text = ui.text.value.trim();
    if (!text || !ready) return;
    send({ type: 'text_input', text });
    const turn = turnEl(0);
    typedTurn = turn;
    const bubble = el('div', 'msg user final typed');
    bubble.append(el('span', 'who', 'you (typed)'), el('span', 'text', text));
    turn.append(bubble);
    ui.text.value = '';
    awaitingSince = performance.now();
    refreshState();
    scrollDown();
  });
  window.addEventListener('resize', drawVad);
  drawVad();
})();
