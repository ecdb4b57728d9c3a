// The labelled instants under a timeline: whole local minutes, hours or days,
// as far apart as a label needs.

"use strict";

import {clockTime} from "./api.js";

/** Tick spacings, in seconds; the first that leaves room for a label is used. */
const STEPS = [
  1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
  172800, 604800,
];
const DAY_NAMES = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
const MONTH_NAMES = [
  "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

function dayLabel(seconds, withMonth) {
  const date = new Date(seconds * 1000);
  const day = `${DAY_NAMES[date.getDay()]} ${date.getDate()}`;
  return withMonth ? `${day} ${MONTH_NAMES[date.getMonth()]}` : day;
}

/** Local midnight at or after ``seconds``. */
function nextMidnight(seconds) {
  const date = new Date(seconds * 1000);
  if (date.getHours() || date.getMinutes() || date.getSeconds() || date.getMilliseconds()) {
    date.setHours(24, 0, 0, 0);
  }
  return date.getTime() / 1000;
}

/** The ticks of [start, end] at ``perPixel`` seconds a pixel: {t, text, day}. */
export function ticks(start, end, perPixel) {
  const step = STEPS.find((s) => s / perPixel >= 90) || STEPS[STEPS.length - 1];
  const times = [];
  if (step < 86400) {
    const offset = -new Date(start * 1000).getTimezoneOffset() * 60;
    for (let t = Math.ceil((start + offset) / step) * step - offset; t <= end; t += step) {
      times.push(t);
    }
  } else {
    const days = step / 86400;
    for (let t = nextMidnight(start); t <= end; ) {
      const date = new Date(t * 1000);
      if (days < 7 || date.getDay() === 1) times.push(t);
      date.setDate(date.getDate() + (days < 7 ? days : 1));
      t = date.getTime() / 1000;
    }
  }
  return times.map((t) => {
    const date = new Date(t * 1000);
    const day = !date.getHours() && !date.getMinutes() && !date.getSeconds();
    let text;
    if (step >= 86400 || (day && step >= 60)) {
      text = dayLabel(t, step >= 86400 || date.getDate() === 1);
    } else {
      text = step < 60 ? clockTime(t) : clockTime(t).slice(0, 5);
    }
    return {t, text, day};
  });
}
