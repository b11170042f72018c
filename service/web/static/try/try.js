// The /try page's drop zone: a dropped file goes into the form's file field and the form is
// sent, exactly as with the file picker (the page works without this script too).
"use strict";
(function () {
  const zone = document.getElementById("drop-zone");
  const form = document.getElementById("trial-form");
  const input = document.getElementById("trial-file");
  const status = document.getElementById("trial-status");
  if (!zone || !form || !input) return;
  const maxBytes = Number(zone.dataset.maxBytes || 0);
  const accepted = /\.(png|jpe?g|dcm|dicom)$/i;

  function say(text) {
    if (status) status.textContent = text;
  }

  function send(file) {
    if (maxBytes && file.size > maxBytes) {
      say(`The file is ${(file.size / 1048576).toFixed(1)} MiB: at most ${maxBytes / 1048576} MiB.`);
      return;
    }
    if (file.name && !accepted.test(file.name) && !/^image\/(png|jpeg)$/.test(file.type)) {
      say("Sending it anyway: the server checks the file's content, not its name.");
    }
    say("Analysing… a cine clip takes a few seconds per frame batch.");
    zone.setAttribute("aria-busy", "true");
    if (typeof form.requestSubmit === "function") form.requestSubmit();
    else form.submit();
  }

  for (const name of ["dragenter", "dragover"]) {
    zone.addEventListener(name, (event) => {
      event.preventDefault();
      zone.classList.add("over");
      zone.style.background = "#e4efff";
    });
  }
  zone.addEventListener("dragleave", () => {
    zone.classList.remove("over");
    zone.style.background = "#f8fbff";
  });
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    const files = event.dataTransfer && event.dataTransfer.files;
    if (!files || files.length === 0) return;
    if (files.length > 1) say("One file at a time: the first is sent.");
    const one = new DataTransfer();
    one.items.add(files[0]);
    input.files = one.files;
    send(files[0]);
  });
  input.addEventListener("change", () => {
    if (input.files && input.files.length) send(input.files[0]);
  });
})();
