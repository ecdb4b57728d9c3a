// Playback of the archive in a <video>: ``archive.mp4?start=T`` covers one
// continuous span from T; when it ends, the player goes on from where it
// ended, or from the start of the next span after a gap, or waits for more
// at the live edge.

"use strict";

import {ApiError, describe, formatDuration, formatTime, streamPath} from "./api.js";

/** At the live edge, how often to look for more, and for how long. */
const LIVE_WAIT = 2000;
const LIVE_PATIENCE = 30000;
/** Spans this close to the end of what played continue it (seconds). */
const EPSILON = 0.05;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export class Player {
  /**
   * ``spansFrom(t)`` resolves to the spans recorded from ``t`` on;
   * ``recording()`` says whether the camera records now; ``onTime(t)``
   * follows the wall-clock time shown; ``onNote(text)`` says what the
   * player did or could not do.
   */
  constructor(video, {spansFrom, recording, onTime, onNote}) {
    this.video = video;
    this.spansFrom = spansFrom;
    this.recording = recording;
    this.onTime = onTime;
    this.onNote = onNote;
    this.streamId = null;
    this.start = null; // wall-clock time of the file's currentTime 0
    this.kind = null; // "archive" or "clip"
    this.generation = 0; // bumped by every new source: late events of an old one are ignored
    video.addEventListener("timeupdate", () => this.time());
    video.addEventListener("seeked", () => this.time());
    video.addEventListener("ended", () => this.ended());
    video.addEventListener("error", () => this.failed());
  }

  /** The wall-clock time shown, or null. */
  get now() {
    if (this.start === null) return null;
    return this.start + (this.video.currentTime || 0);
  }

  time() {
    const t = this.now;
    if (t !== null) this.onTime(t);
  }

  /** Play camera ``streamId``'s archive from ``t`` (to the millisecond after it:
   * a span's start rounded down would lie in the gap before it). */
  play(streamId, t) {
    const start = Math.ceil(t * 1000) / 1000;
    this.streamId = streamId;
    this.kind = "archive";
    this.load(`${streamPath(streamId, "archive.mp4")}?start=${start.toFixed(3)}`, start);
  }

  /** Play an exported clip that starts at ``t``. */
  playClip(link, t) {
    this.kind = "clip";
    this.load(link, t);
  }

  load(url, t) {
    this.generation += 1;
    this.start = t;
    this.video.hidden = false;
    this.video.src = url;
    this.video.dataset.start = t.toFixed(3);
    this.onTime(t);
    const playing = this.video.play();
    if (playing) {
      playing.catch((error) => {
        if (error.name === "NotAllowedError") this.onNote("Press play to start");
      });
    }
  }

  stop() {
    this.generation += 1;
    this.start = null;
    this.kind = null;
    this.video.pause();
    this.video.removeAttribute("src");
    delete this.video.dataset.start;
    this.video.load();
    this.video.hidden = true;
  }

  async ended() {
    const generation = this.generation;
    if (this.kind !== "archive") return;
    const end = this.start + (this.video.duration || 0);
    const waitUntil = Date.now() + LIVE_PATIENCE;
    for (;;) {
      let spans;
      try {
        spans = await this.spansFrom(end);
      } catch (error) {
        this.onNote(error.message);
        return;
      }
      if (generation !== this.generation) return;
      const next = spans.find((span) => span.stop > end + EPSILON);
      if (next) {
        const from = Math.max(end, next.start);
        if (next.start > end + EPSILON) {
          this.onNote(`Skipped ${formatDuration(next.start - end)} with nothing recorded`);
        }
        this.play(this.streamId, from);
        return;
      }
      if (!this.recording() || Date.now() > waitUntil) {
        this.onNote(`End of the recording at ${formatTime(end)}`);
        return;
      }
      await sleep(LIVE_WAIT);
      if (generation !== this.generation) return;
    }
  }

  /** The <video> cannot read an error answer: ask again for its first byte to say why. */
  async failed() {
    const generation = this.generation;
    const url = this.video.getAttribute("src");
    if (!url) return;
    let status = 0;
    let body = null;
    try {
      const response = await fetch(url, {headers: {Range: "bytes=0-0"}, cache: "no-store"});
      status = response.status;
      if (!response.ok) body = await response.json().catch(() => null);
    } catch {
      status = 0;
    }
    if (generation !== this.generation) return;
    const onwards = body && typeof body.next === "number" && body.next > this.start;
    if (status === 404 && onwards && this.kind === "archive") {
      this.onNote(`Nothing recorded there: playing from ${formatTime(body.next)}`);
      this.play(this.streamId, body.next);
      return;
    }
    if (status && status < 400) {
      const error = this.video.error;
      this.onNote(`This browser cannot play the video${error ? ` (${error.message || error.code})` : ""}`);
      return;
    }
    this.onNote(new ApiError(status, describe(status, body)).message);
  }
}
