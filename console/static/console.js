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
