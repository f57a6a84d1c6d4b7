// The settings page: copying a new API token's key (shown once) to the clipboard.
const key = document.getElementById("new-key");
const copy = document.getElementById("copy-key");
if (key && copy) {
  key.addEventListener("focus", () => key.select());
  copy.addEventListener("click", async () => {
    key.select();
    try {
      await navigator.clipboard.writeText(key.value);
      copy.textContent = "Copied";
    } catch {
      copy.textContent = "Select and copy it by hand";
    }
  });
}
