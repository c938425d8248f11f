// Copy buttons: shown only where a script runs; without one the text
// stays selectable in its readonly textarea.
for (const b of document.querySelectorAll("button[data-copy]")) {
  const t = document.getElementById(b.dataset.copy);
  if (!t || !navigator.clipboard) continue;
  b.hidden = false;
  b.addEventListener("click", () => {
    navigator.clipboard.writeText(t.value).then(
      () => { b.textContent = "Copied"; },
      () => { t.select(); b.textContent = "Select and copy (Ctrl+C)"; });
  });
}
// A page shown once (a new token) names the list as its address, so a
// reload shows the list rather than sending the form again.
const once = document.querySelector("[data-reload-to]");
if (once && history.replaceState) history.replaceState(null, "", once.dataset.reloadTo);
