// The portal's progressive enhancement: every page works without it (plain forms, served pages).
// With it: a print button, the dose fields shown only for a kind that needs a dose, and on /verify a
// camera scan where the browser has BarcodeDetector. No inline script: the CSP allows only this file.
"use strict";

function showJsOnly() {
  for (const node of document.querySelectorAll(".js-only")) node.hidden = false;
}

function printButton() {
  const button = document.querySelector("[data-print]");
  if (button) button.addEventListener("click", () => window.print());
}

function doseFields() {
  const kind = document.getElementById("kind");
  const fields = document.getElementById("dose-fields");
  if (!kind || !fields) return;
  const update = () => {
    const unused = kind.value === fields.dataset.notFor;
    fields.hidden = unused;
    fields.disabled = unused;  // a disabled fieldset's fields are not sent
  };
  kind.addEventListener("change", update);
  update();
}

async function scanLoop(detector, video, stop) {
  while (!stop.done) {
    try {
      const codes = await detector.detect(video);
      const hc1 = codes.map((c) => c.rawValue).find((v) => v.startsWith("HC1:"));
      if (hc1) return hc1;
    } catch (e) { /* a frame not ready yet */ }
    await new Promise((resolve) => requestAnimationFrame(resolve));
  }
  return null;
}

function cameraScan() {
  const button = document.getElementById("scan");
  const scanner = document.querySelector(".scanner");
  if (!button || !scanner) return;
  if (!("BarcodeDetector" in window) || !navigator.mediaDevices) {
    scanner.remove();  // no camera scan here: pasting still works
    return;
  }
  const video = document.getElementById("scan-video");
  const label = button.textContent;
  let running = null;
  button.addEventListener("click", async () => {
    if (running) { running.done = true; return; }
    running = { done: false };
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" } });
    } catch (e) {  // no camera, or permission refused: pasting still works
      running = null;
      return;
    }
    video.srcObject = stream;
    video.hidden = false;
    await video.play();
    button.textContent = button.dataset.stop;
    const hc1 = await scanLoop(new BarcodeDetector({ formats: ["qr_code"] }), video, running);
    for (const track of stream.getTracks()) track.stop();
    video.hidden = true;
    button.textContent = label;
    running = null;
    if (hc1) {
      document.getElementById("hc1").value = hc1;
      document.getElementById("verify-form").requestSubmit();
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  showJsOnly();
  printButton();
  doseFields();
  cameraScan();
});
