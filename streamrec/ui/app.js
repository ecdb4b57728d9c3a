// streamrec's web UI: the cameras, their pictures and timelines, playback,
// exports, and the operator's controls, over the service's JSON API.

"use strict";

import {
  call,
  formatBytes,
  formatDuration,
  formatTime,
  offsetOf,
  onSignedOut,
  picture,
  streamPath,
  zoneLabel,
} from "./api.js";
import {Exports} from "./export.js";
import {Player} from "./player.js";
import {Timeline} from "./timeline.js";

const LIST_REFRESH = 3000;
const THUMB_REFRESH = 5000;
const LIVE_REFRESH = 2000;
const THUMB_WIDTH = 320;
/** Past this many cameras the list gets a filter box. */
const FILTER_FROM = 8;

const STATES = {
  recording: "Recording",
  starting: "Starting",
  reconnecting: "Reconnecting",
  stopped: "Stopped",
  ended: "Source ended",
  disk_full: "Disk full",
  failed: "Failed",
};

const $ = (id) => document.getElementById(id);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const app = {
  session: null, // {role, open}
  streams: new Map(), // id -> the stream's status as the API gives it
  cards: new Map(), // id -> {node, image, url, last, fetched}
  selected: null,
  timeline: null,
  player: null,
  mode: "live", // "live", "archive" or "clip"
  listTimer: null,
  liveTimer: null,
  thumbTimer: null,
  liveUrl: null,
  visibleCards: new Set(),
  exports: null,
  busy: false, // a start or stop is under way
  thumbsBusy: false,
};

function canOperate() {
  return app.session && (app.session.role === "operator" || app.session.role === "admin");
}

function show(id, visible) {
  $(id).hidden = !visible;
}

function setText(id, text) {
  $(id).textContent = text;
}

let toastTimer = null;
function toast(text) {
  const box = $("toast");
  box.textContent = text;
  box.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => {
    box.hidden = true;
  }, 5000);
}

function showError(id, text) {
  const node = $(id);
  node.textContent = text || "";
  node.hidden = !text;
}

// -- signing in ------------------------------------------------------------------

async function boot() {
  setText("zone", zoneLabel());
  for (;;) {
    try {
      signedIn(await call("GET", "session", null, {quiet: true}));
      return;
    } catch (error) {
      if (error.status === 401) {
        showSignIn("");
        return;
      }
      setText("loading", `${error.message}; trying again…`);
      await sleep(3000);
    }
  }
}

function showSignIn(message) {
  stopPolling();
  app.session = null;
  forgetCameras();
  show("loading", false);
  show("app", false);
  show("who", false);
  show("signin", true);
  showError("signin-error", message);
  $("token").value = "";
  $("token").focus();
}

async function signIn(event) {
  event.preventDefault();
  const token = $("token").value.trim();
  if (!token) return;
  const button = event.submitter || $("signin-form").querySelector("button");
  button.disabled = true;
  showError("signin-error", "");
  try {
    signedIn(await call("POST", "session", {token}, {quiet: true}));
  } catch (error) {
    showError("signin-error", error.message);
  } finally {
    button.disabled = false;
  }
}

async function signOut() {
  try {
    await call("POST", "session/end", null, {quiet: true});
  } catch (error) {
    toast(error.message);
  }
  showSignIn("");
}

/** Nothing of a session stays on the page after it. */
function forgetCameras() {
  selectCamera(null);
  for (const card of app.cards.values()) {
    cardObserver.unobserve(card.node);
    if (card.url) URL.revokeObjectURL(card.url);
  }
  app.cards.clear();
  app.streams.clear();
  app.visibleCards.clear();
  $("camera-list").replaceChildren();
}

function signedIn(session) {
  app.session = session;
  show("loading", false);
  show("signin", false);
  show("app", true);
  show("who", true);
  setText("role", session.open ? "Open API: no token needed" : `Signed in: ${session.role}`);
  show("sign-out", !session.open);
  const operate = canOperate();
  $("add").disabled = !operate;
  $("add").title = operate ? "Register a camera" : `Your role (${session.role}) cannot add cameras`;
  startPolling();
}

onSignedOut(() => {
  if (app.session) showSignIn("Your session has ended: sign in again.");
});

// -- the list of cameras -------------------------------------------------------------

function startPolling() {
  stopPolling();
  refreshList();
  app.thumbTimer = setInterval(refreshThumbnails, 1000);
}

function stopPolling() {
  clearTimeout(app.listTimer);
  clearInterval(app.thumbTimer);
  clearTimeout(app.liveTimer);
  app.listTimer = app.thumbTimer = app.liveTimer = null;
}

async function refreshList() {
  clearTimeout(app.listTimer);
  if (!app.session) return;
  if (!document.hidden) {
    try {
      const answer = await call("GET", "streams/");
      showStreams(answer.result);
    } catch (error) {
      if (error.status !== 401) toast(error.message);
    }
  }
  if (app.session) app.listTimer = setTimeout(refreshList, LIST_REFRESH);
}

function showStreams(streams) {
  const list = $("camera-list");
  const seen = new Set();
  streams.sort((a, b) => a.id - b.id);
  let previous = null;
  for (const stream of streams) {
    seen.add(stream.id);
    app.streams.set(stream.id, stream);
    let card = app.cards.get(stream.id);
    if (!card) {
      card = makeCard(stream.id);
      app.cards.set(stream.id, card);
    }
    fillCard(card, stream);
    if (card.node.previousElementSibling !== previous || !card.node.parentNode) {
      if (previous) previous.after(card.node);
      else list.prepend(card.node);
    }
    previous = card.node;
  }
  for (const [id, card] of app.cards) {
    if (!seen.has(id)) {
      cardObserver.unobserve(card.node);
      card.node.remove();
      if (card.url) URL.revokeObjectURL(card.url);
      app.cards.delete(id);
      app.streams.delete(id);
    }
  }
  show("no-cameras", streams.length === 0);
  show("filter", streams.length >= FILTER_FROM);
  filterCards();
  if (app.selected === null && streams.length) {
    const wanted = Number(new URLSearchParams(location.hash.slice(1)).get("camera"));
    selectCamera(app.streams.has(wanted) ? wanted : streams[0].id);
  } else if (app.selected !== null && !app.streams.has(app.selected)) {
    selectCamera(streams.length ? streams[0].id : null);
  } else if (app.selected !== null) {
    showCamera();
  }
  show("nothing-selected", app.selected === null);
}

const cardObserver = new IntersectionObserver((entries) => {
  for (const entry of entries) {
    const id = Number(entry.target.dataset.id);
    if (entry.isIntersecting) app.visibleCards.add(id);
    else app.visibleCards.delete(id);
  }
});

function makeCard(id) {
  const node = document.createElement("li");
  node.className = "camera-card";
  node.dataset.id = String(id);
  node.innerHTML = `
    <button type="button" class="card-button">
      <span class="thumb"><img alt="" hidden><span class="thumb-none">No picture</span></span>
      <span class="card-text">
        <span class="card-title"></span>
        <span class="state"></span>
        <span class="card-error"></span>
      </span>
    </button>`;
  node.querySelector("button").addEventListener("click", () => selectCamera(id));
  cardObserver.observe(node);
  return {node, image: node.querySelector("img"), url: null, last: null, fetched: 0};
}

function cameraName(stream) {
  return `#${stream.id} ${stream.description || ""}`.trim();
}

function stateBadge(node, stream) {
  node.textContent = STATES[stream.state] || stream.state;
  node.className = `state state-${stream.state}`;
}

function fillCard(card, stream) {
  const node = card.node;
  node.querySelector(".card-title").textContent = cameraName(stream);
  stateBadge(node.querySelector(".state"), stream);
  const error = node.querySelector(".card-error");
  error.textContent = stream.last_error || "";
  error.title = stream.last_error || "";
  node.querySelector("button").setAttribute("aria-current", String(stream.id === app.selected));
  node.classList.toggle("selected", stream.id === app.selected);
}

function filterCards() {
  const words = $("filter").value.trim().toLowerCase();
  for (const [id, card] of app.cards) {
    const stream = app.streams.get(id);
    const text = `#${id} ${stream.description} ${stream.url}`.toLowerCase();
    card.node.hidden = Boolean(words) && !text.includes(words);
  }
}

/** The latest picture of every card in sight whose camera recorded more since. */
async function refreshThumbnails() {
  if (document.hidden || !app.session || app.thumbsBusy) return;
  app.thumbsBusy = true;
  try {
    await fetchThumbnails();
  } finally {
    app.thumbsBusy = false;
  }
}

async function fetchThumbnails() {
  const due = Date.now() - THUMB_REFRESH;
  for (const id of app.visibleCards) {
    const card = app.cards.get(id);
    const stream = app.streams.get(id);
    const last = stream && stream.recorded.last;
    if (!card || last == null || last === card.last || card.fetched > due) continue;
    card.fetched = Date.now();
    const url = await picture(`${streamPath(id, "snapshot")}?width=${THUMB_WIDTH}`);
    if (!url) continue;
    card.last = last;
    if (card.url) URL.revokeObjectURL(card.url);
    card.url = url;
    card.image.src = url;
    card.image.hidden = false;
    card.node.querySelector(".thumb-none").hidden = true;
  }
}

// -- one camera ---------------------------------------------------------------------

function selectCamera(id) {
  if (id === app.selected) return;
  app.selected = id;
  if (app.timeline) app.timeline.destroy();
  app.timeline = null;
  if (app.player) app.player.stop();
  app.mode = "live";
  if (app.liveUrl) URL.revokeObjectURL(app.liveUrl);
  app.liveUrl = null;
  for (const [cardId, card] of app.cards) {
    card.node.classList.toggle("selected", cardId === id);
    card.node.querySelector("button").setAttribute("aria-current", String(cardId === id));
  }
  show("camera", id !== null);
  show("nothing-selected", id === null);
  if (id === null) return;
  history.replaceState(null, "", `#camera=${id}`);
  showError("camera-error", "");
  app.exports.reset(`Local time (UTC${offsetOf(Date.now() / 1000)}), or pick a range on the timeline`);
  const first = app.streams.get(id)?.recorded.first;
  app.timeline = new Timeline($("timeline"), {
    width: initialWidth(first),
    load: async (start, stop) => {
      const answer = await call("GET", streamPath(id, "timeline"), {
        start: start.toFixed(3),
        stop: stop.toFixed(3),
      });
      return answer.spans;
    },
    snapshotUrl: (t, width) => `${streamPath(id, "snapshot")}?t=${t.toFixed(3)}&width=${width}`,
    onPlay: (t) => playFrom(t),
    onSelect: (start, stop) => app.exports.choose(start, stop),
  });
  app.timeline.requestLoad(true);
  showCamera();
  showLive();
}

/** A window that shows a young recording as more than a sliver. */
function initialWidth(first) {
  const age = first == null ? 0 : Date.now() / 1000 - first;
  return age < 120 ? 300 : age < 600 ? 900 : 3600;
}

function showCamera() {
  const stream = app.streams.get(app.selected);
  if (!stream) return;
  setText("camera-title", cameraName(stream));
  stateBadge($("camera-state"), stream);
  if (!app.busy) {
    show("start", !stream.started);
    show("stop", stream.started);
  }
  for (const id of ["start", "stop"]) {
    const button = $(id);
    button.disabled = app.busy || !canOperate();
    button.title = canOperate() ? "" : `Your role (${app.session.role}) cannot start or stop streams`;
  }
  const recorded = stream.recorded;
  const parts = [stream.url];
  if (recorded.segments) {
    parts.push(
      `${formatDuration(recorded.seconds)} recorded, ${formatBytes(recorded.bytes)}, ` +
        `since ${formatTime(recorded.first)}`,
    );
  }
  if (stream.node) parts.push(`node ${stream.node}`);
  if (stream.clock) {
    const clock = stream.clock === "camera" ? "camera's clock" : "arrival time";
    parts.push(`${clock}, ±${stream.time_error_ms} ms`);
  }
  setText("camera-meta", parts.join(" · "));
  $("camera-meta").title = stream.clock_reason || "";
  const error = stream.last_error && stream.state !== "recording" ? stream.last_error : "";
  if (!$("camera-error").dataset.action) showError("camera-error", error);
  if (app.mode === "live") liveLabel();
}

async function operate(action) {
  const id = app.selected;
  const button = $(action);
  app.busy = true;
  showCamera();
  button.textContent = action === "start" ? "Starting…" : "Stopping…";
  delete $("camera-error").dataset.action;
  try {
    await call("POST", streamPath(id, action));
    toast(action === "start" ? "Recording started" : "Recording stopped");
    showError("camera-error", "");
  } catch (error) {
    $("camera-error").dataset.action = action;
    showError("camera-error", error.message);
  } finally {
    app.busy = false;
    button.textContent = action === "start" ? "Start recording" : "Stop recording";
    if (id === app.selected) {
      await refreshList();
      if (app.timeline) app.timeline.reload();
    }
  }
}

// -- the stage: the latest picture, or playback ------------------------------------------

function liveLabel() {
  const stream = app.streams.get(app.selected);
  const last = stream && stream.recorded.last;
  const shown = last != null && Boolean(app.liveUrl);
  setText("stage-label", shown ? `Latest picture · ${formatTime(last)}` : "");
  setText("no-picture", last != null ? "No picture yet." : "Nothing recorded yet.");
}

function showLive() {
  app.mode = "live";
  if (app.player) app.player.stop();
  if (app.timeline) app.timeline.setPlayhead(null);
  show("live-button", false);
  liveLabel();
  refreshLive();
}

async function refreshLive() {
  clearTimeout(app.liveTimer);
  const id = app.selected;
  if (id === null || app.mode !== "live" || !app.session) return;
  const stream = app.streams.get(id);
  if (!document.hidden && stream && stream.recorded.last != null) {
    const width = Math.min(1920, Math.round(($("live").parentElement.clientWidth || 640) *
      (window.devicePixelRatio || 1) / 16) * 16);
    const url = await picture(`${streamPath(id, "snapshot")}?width=${Math.max(160, width)}`);
    if (id !== app.selected || app.mode !== "live") {
      if (url) URL.revokeObjectURL(url);
      return;
    }
    if (url) {
      if (app.liveUrl) URL.revokeObjectURL(app.liveUrl);
      app.liveUrl = url;
      $("live").src = url;
    }
  }
  const has = Boolean(app.liveUrl) && stream && stream.recorded.last != null;
  show("live", app.mode === "live" && has);
  show("no-picture", app.mode === "live" && !has);
  if (app.mode === "live") liveLabel();
  app.liveTimer = setTimeout(refreshLive, LIVE_REFRESH);
}

function playing(kind) {
  app.mode = kind;
  clearTimeout(app.liveTimer);
  show("live", false);
  show("no-picture", false);
  show("live-button", true);
}

function playFrom(t) {
  const span = app.timeline.spanAt(t);
  const next = span ? null : app.timeline.spanAfter(t);
  if (!span && !next) {
    toast(`Nothing recorded at ${formatTime(t)}`);
    return;
  }
  if (!span) toast(`Nothing recorded at ${formatTime(t)}: playing from ${formatTime(next.start)}`);
  playing("archive");
  app.player.play(app.selected, span ? t : next.start);
}

function playClip(clip) {
  playing("clip");
  app.player.playClip(clip.link, clip.start);
  $("video").scrollIntoView({block: "nearest", behavior: "smooth"});
}

function makePlayer() {
  app.player = new Player($("video"), {
    spansFrom: async (t) => {
      const answer = await call("GET", streamPath(app.selected, "timeline"), {
        start: t.toFixed(3),
        stop: (t + 7 * 86400).toFixed(3),
      });
      return answer.spans;
    },
    recording: () => {
      const stream = app.streams.get(app.selected);
      return Boolean(stream && stream.started);
    },
    onTime: (t) => {
      const what = app.mode === "clip" ? "Clip" : "Playing";
      setText("stage-label", `${what} · ${formatTime(t)}`);
      if (app.timeline && app.mode === "archive") app.timeline.setPlayhead(t);
    },
    onNote: (text) => toast(text),
  });
}

// -- adding a camera ----------------------------------------------------------------------

function openCreate() {
  showError("create-error", "");
  $("create-form").reset();
  $("create-dialog").showModal();
  $("create-url").focus();
}

async function create(event) {
  event.preventDefault();
  const params = {url: $("create-url").value.trim(), description: $("create-description").value};
  const days = $("create-days").value.trim();
  if (days) params.max_age = Number(days) * 86400;
  $("create-submit").disabled = true;
  showError("create-error", "");
  let id;
  try {
    id = (await call("POST", "streams/create", params)).stream_id;
  } catch (error) {
    showError("create-error", error.message);
    return;
  } finally {
    $("create-submit").disabled = false;
  }
  $("create-dialog").close();
  toast(`Camera #${id} added`);
  await refreshList();
  selectCamera(id);
  if ($("create-start").checked) await operate("start");
}

// -- wiring -----------------------------------------------------------------------------------

function wire() {
  $("signin-form").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", signOut);
  $("add").addEventListener("click", openCreate);
  $("create-form").addEventListener("submit", create);
  $("create-cancel").addEventListener("click", () => $("create-dialog").close());
  $("start").addEventListener("click", () => operate("start"));
  $("stop").addEventListener("click", () => operate("stop"));
  $("live-button").addEventListener("click", showLive);
  $("filter").addEventListener("input", filterCards);
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && app.session) {
      refreshList();
      if (app.mode === "live") refreshLive();
    }
  });
  makePlayer();
  app.exports = new Exports({
    camera: () => app.selected,
    timeline: () => app.timeline,
    play: playClip,
  });
}

wire();
boot();
