// The service's JSON API as the page calls it, and times as the page shows them.
//
// Paths are relative to the page, so the UI works behind a proxy that serves
// the service under a prefix. The session cookie goes along by itself.

"use strict";

export class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status;
    this.body = body || {};
  }
}

/** What the page says for an answer other than 200: the API's own words. */
export function describe(status, body) {
  const said = body && body.error_message ? body.error_message : "";
  const reason = body && body.reason ? ` (${body.reason})` : "";
  if (status === 403) {
    return `Your role cannot do this${said ? `: ${said}` : ""}`;
  }
  if (status === 0) {
    return "The service does not answer";
  }
  return (said || `The service answered ${status}`) + reason;
}

const listeners = new Set();

/** ``listener()`` runs when an answer says the session is gone (401). */
export function onSignedOut(listener) {
  listeners.add(listener);
}

/**
 * Call the API: GET with a query string, POST with a JSON body. Resolves to
 * the JSON answer; rejects with an ApiError worded for people.
 */
export async function call(method, path, params = null, options = {}) {
  const init = {method, headers: {Accept: "application/json"}, cache: "no-store"};
  let url = path;
  if (params && method === "GET") {
    url += "?" + new URLSearchParams(params);
  } else if (params) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(params);
  }
  if (options.signal) init.signal = options.signal;
  let response;
  try {
    response = await fetch(url, init);
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, describe(0));
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) {
    if (response.status === 401 && !options.quiet) {
      for (const listener of listeners) listener();
    }
    throw new ApiError(response.status, describe(response.status, body), body);
  }
  return body;
}

/** A picture as an object URL, or null where the API has none (404). */
export async function picture(url, signal) {
  let response;
  try {
    response = await fetch(url, {signal, cache: url.includes("t=") ? "default" : "no-store"});
  } catch (error) {
    if (error.name === "AbortError") throw error;
    return null;
  }
  if (response.status === 401) {
    for (const listener of listeners) listener();
  }
  if (!response.ok) return null;
  return URL.createObjectURL(await response.blob());
}

export function streamPath(id, what) {
  return `streams/${encodeURIComponent(id)}/${what}`;
}

// -- times: the browser's local zone, with its offset -------------------------

const pad = (n, width = 2) => String(n).padStart(width, "0");

/** "+01:00" for the browser's zone at ``seconds``. */
export function offsetOf(seconds) {
  const minutes = -new Date(seconds * 1000).getTimezoneOffset();
  const sign = minutes < 0 ? "-" : "+";
  const abs = Math.abs(minutes);
  return `${sign}${pad(Math.floor(abs / 60))}:${pad(abs % 60)}`;
}

/** The zone's name and current offset, for the page's header. */
export function zoneLabel() {
  let name = "";
  try {
    name = Intl.DateTimeFormat().resolvedOptions().timeZone || "";
  } catch {
    name = "";
  }
  const offset = offsetOf(Date.now() / 1000);
  return `Times in ${name ? `${name}, ` : ""}UTC${offset}`;
}

/** The local wall-clock fields of ``seconds``. */
function fields(seconds) {
  const date = new Date(Math.round(seconds * 1000));
  return {
    date: `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}`,
    clock: `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`,
    ms: date.getMilliseconds(),
  };
}

/** "2025-11-26 14:03:12.5" in local time, as an input holds it (no offset). */
export function inputTime(seconds) {
  const {date, clock, ms} = fields(seconds);
  const fraction = ms ? `.${pad(ms, 3)}`.replace(/0+$/, "") : "";
  return `${date} ${clock}${fraction}`;
}

/** "2025-11-26 14:03:12 +01:00" (``ms``: with milliseconds when there are any). */
export function formatTime(seconds, {ms = false} = {}) {
  const parts = fields(seconds);
  const fraction = ms && parts.ms ? `.${pad(parts.ms, 3)}` : "";
  return `${parts.date} ${parts.clock}${fraction} ${offsetOf(seconds)}`;
}

/** "14:03:12" in local time. */
export function clockTime(seconds) {
  return fields(seconds).clock;
}

/** "1 h 2 min", "4.5 s", "3 days 2 h". */
export function formatDuration(seconds) {
  const s = Math.abs(seconds);
  if (s < 60) return `${s < 10 ? Math.round(s * 10) / 10 : Math.round(s)} s`;
  if (s < 3600) {
    const m = Math.floor(s / 60);
    const rest = Math.round(s - m * 60);
    return rest ? `${m} min ${rest} s` : `${m} min`;
  }
  if (s < 86400) {
    const h = Math.floor(s / 3600);
    const m = Math.round((s - h * 3600) / 60);
    return m ? `${h} h ${m} min` : `${h} h`;
  }
  const d = Math.floor(s / 86400);
  const h = Math.round((s - d * 86400) / 3600);
  return `${d} day${d === 1 ? "" : "s"}${h ? ` ${h} h` : ""}`;
}

export function formatBytes(bytes) {
  if (bytes == null) return "";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit += 1;
  }
  return `${value < 10 && unit ? value.toFixed(1) : Math.round(value)} ${units[unit]}`;
}

const TIME = new RegExp(
  "^(\\d{4})-(\\d{1,2})-(\\d{1,2})[ T]+(\\d{1,2}):(\\d{2})(?::(\\d{2})(?:[.,](\\d{1,6}))?)?" +
    "\\s*(Z|[+-]\\d{2}:?\\d{2})?$",
  "i",
);
const CLOCK = /^(\d{1,2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,6}))?)?$/;

/**
 * POSIX seconds from what a person typed: "2025-11-26 14:03:12.5" (local
 * time), the same with an offset ("+01:00", "Z"), "14:03:12" (on the day of
 * ``near``), or POSIX seconds. Throws an Error that says what is accepted.
 */
export function parseTime(text, near = Date.now() / 1000) {
  const value = text.trim();
  if (/^\d{9,}(\.\d+)?$/.test(value)) return Number(value);
  let match = TIME.exec(value);
  let year, month, day, hour, minute, second, fraction, zone;
  if (match) {
    [, year, month, day, hour, minute, second, fraction, zone] = match;
  } else if ((match = CLOCK.exec(value))) {
    [, hour, minute, second, fraction] = match;
    const base = new Date(near * 1000);
    [year, month, day] = [base.getFullYear(), base.getMonth() + 1, base.getDate()];
  } else {
    throw new Error(`"${value}" is not a time: write YYYY-MM-DD HH:MM:SS (local time)`);
  }
  const ms = fraction ? Number(`0.${fraction}`) * 1000 : 0;
  const parts = [Number(year), Number(month) - 1, Number(day), Number(hour), Number(minute)];
  const secs = Number(second || 0);
  if (parts[1] > 11 || parts[2] < 1 || parts[2] > 31 || parts[3] > 23 || secs > 59) {
    throw new Error(`"${value}" is not a valid date and time`);
  }
  if (zone) {
    const sign = zone.toUpperCase() === "Z" ? 0 : zone[0] === "-" ? -1 : 1;
    const digits = zone.replace(/[^0-9]/g, "");
    const offset = sign ? sign * (Number(digits.slice(0, 2)) * 60 + Number(digits.slice(2))) : 0;
    return (Date.UTC(...parts, secs, ms) - offset * 60000) / 1000;
  }
  return new Date(...parts, secs, ms).getTime() / 1000;
}
