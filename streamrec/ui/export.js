// The export form: a range chosen on the timeline or typed as the user
// writes times, asked for through get_clip (polled until done or failed, with
// its progress), then the clips with their links.

"use strict";

import {call, formatBytes, formatDuration, formatTime, inputTime, parseTime, streamPath} from "./api.js";

const POLL = 1000;

const $ = (id) => document.getElementById(id);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function show(id, visible) {
  $(id).hidden = !visible;
}

function setText(id, text) {
  $(id).textContent = text;
}

function showError(id, text) {
  const node = $(id);
  node.textContent = text || "";
  node.hidden = !text;
}

export class Exports {
  /**
   * ``camera()`` is the chosen camera's id, ``timeline()`` its Timeline (or
   * null), ``play(clip)`` plays an exported clip in the page.
   */
  constructor({camera, timeline, play}) {
    this.camera = camera;
    this.timeline = timeline;
    this.play = play;
    this.run = 0; // bumped by every export and every new camera: an older poll stops
    $("export").addEventListener("submit", (event) => this.submit(event));
    $("export-start").addEventListener("input", () => this.typed());
    $("export-stop").addEventListener("input", () => this.typed());
  }

  /** A new camera: an empty form. */
  reset(hint) {
    this.run += 1;
    showError("export-error", "");
    show("export-progress", false);
    $("export-button").disabled = false;
    $("clips").replaceChildren();
    $("export-start").value = "";
    $("export-stop").value = "";
    setText("export-hint", hint);
    $("export-hint").classList.remove("error");
  }

  /** A range chosen on the timeline. */
  choose(start, stop) {
    $("export-start").value = inputTime(start);
    $("export-stop").value = inputTime(stop);
    this.typed();
  }

  /** The range in the inputs, read as the user wrote it; null (and a hint) when it is not one. */
  typed() {
    const timeline = this.timeline();
    const near = timeline ? timeline.end : Date.now() / 1000;
    try {
      const startText = $("export-start").value;
      const stopText = $("export-stop").value;
      if (!startText.trim() || !stopText.trim()) return null;
      const start = parseTime(startText, near);
      const stop = parseTime(stopText, start);
      if (stop <= start) throw new Error("The end must come after the start");
      setText(
        "export-hint",
        `${formatTime(start, {ms: true})} → ${formatTime(stop, {ms: true})} · ` +
          formatDuration(stop - start),
      );
      $("export-hint").classList.remove("error");
      if (timeline) timeline.setSelection(start, stop);
      return {start, stop};
    } catch (error) {
      setText("export-hint", error.message);
      $("export-hint").classList.add("error");
      return null;
    }
  }

  async submit(event) {
    event.preventDefault();
    const range = this.typed();
    const id = this.camera();
    if (!range || id === null) return;
    const run = ++this.run;
    const params = {start: range.start.toFixed(3), stop: range.stop.toFixed(3)};
    showError("export-error", "");
    $("clips").replaceChildren();
    show("export-progress", true);
    $("export-bar").value = 0;
    $("export-button").disabled = true;
    setText("export-status", "Asking…");
    try {
      for (;;) {
        const job = await call("POST", streamPath(id, "get_clip"), params);
        if (run !== this.run) return;
        $("export-bar").value = job.progress || 0;
        if (job.status === "done") {
          setText("export-status", "Done");
          this.showClips(job.clips);
          return;
        }
        if (job.status === "failed") {
          show("export-progress", false);
          showError("export-error", job.error_message || "The export failed");
          return;
        }
        const waiting = job.waiting_for ? ` (waiting for ${job.waiting_for})` : "";
        setText(
          "export-status",
          job.status === "pending"
            ? `Waiting for its turn or for the recording${waiting}`
            : `Building… ${Math.round((job.progress || 0) * 100)} %`,
        );
        await sleep(POLL);
        if (run !== this.run) return;
      }
    } catch (error) {
      if (run !== this.run) return;
      show("export-progress", false);
      showError("export-error", error.message);
    } finally {
      if (run === this.run) $("export-button").disabled = false;
    }
  }

  showClips(clips) {
    const list = $("clips");
    if (!clips.length) {
      const item = document.createElement("li");
      item.className = "muted";
      item.textContent = "Nothing was recorded in this range.";
      list.replaceChildren(item);
      return;
    }
    list.replaceChildren(...clips.map((clip) => this.clipItem(clip)));
  }

  clipItem(clip) {
    const item = document.createElement("li");
    item.className = "clip";
    const link = document.createElement("a");
    link.className = "clip-link";
    link.href = clip.link;
    link.target = "_blank";
    link.rel = "noopener";
    link.textContent =
      `${formatTime(clip.start, {ms: true})} – ${formatTime(clip.stop, {ms: true}).slice(11)}`;
    const facts = document.createElement("span");
    facts.className = "muted";
    facts.textContent =
      ` ${formatDuration(clip.duration ?? clip.stop - clip.start)}` +
      (clip.size != null ? ` · ${formatBytes(clip.size)}` : "");
    const play = document.createElement("button");
    play.type = "button";
    play.className = "quiet clip-play";
    play.textContent = "Play";
    play.addEventListener("click", () => this.play(clip));
    const save = document.createElement("a");
    save.className = "clip-download";
    save.href = clip.link;
    save.download = "";
    save.textContent = "Download";
    item.append(link, facts, play, save);
    return item;
  }
}
