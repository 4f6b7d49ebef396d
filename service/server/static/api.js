// Calls to the pipeserve JSON API, shared by the dashboard and the docs page.
// The auth key is kept only in sessionStorage: it is gone when the tab closes.

const KEY_ITEM = "pipeserve.auth-key";
let pendingPrompt = null;

export function storedKey() {
  return sessionStorage.getItem(KEY_ITEM);
}

export function forgetKey() {
  sessionStorage.removeItem(KEY_ITEM);
}

function buildDialog() {
  const dialog = document.createElement("dialog");
  dialog.id = "key-dialog";
  dialog.innerHTML = `
    <form method="dialog" id="key-form">
      <h2>API key</h2>
      <p id="key-message"></p>
      <label>Key <input type="password" id="key-input" name="key" autocomplete="off" required></label>
      <p class="hint">Kept in this tab only (sessionStorage). Make one with
        <code>pipeserve keys create</code>.</p>
      <menu><button type="submit" id="key-submit">Use key</button></menu>
    </form>`;
  // Escape would close the dialog with no key; the page cannot work without one.
  dialog.addEventListener("cancel", (event) => event.preventDefault());
  document.body.append(dialog);
  return dialog;
}

// Ask for the key once, however many requests were refused at the same time.
export function askForKey(message) {
  if (pendingPrompt) return pendingPrompt;
  const dialog = document.getElementById("key-dialog") || buildDialog();
  dialog.querySelector("#key-message").textContent = message;
  const input = dialog.querySelector("#key-input");
  input.value = "";
  pendingPrompt = new Promise((resolve) => {
    dialog.addEventListener(
      "close",
      () => {
        const key = input.value.trim();
        sessionStorage.setItem(KEY_ITEM, key);
        pendingPrompt = null;
        resolve(key);
      },
      { once: true },
    );
  });
  dialog.showModal();
  input.focus();
  return pendingPrompt;
}

export function authHeaders() {
  const key = storedKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

// fetch() with the key; on a 401 it asks for a key and tries again. A 401 means the
// request was not served, so sending it again (even a POST) runs nothing twice.
export async function api(path, { method = "GET", body } = {}) {
  for (;;) {
    const sentKey = storedKey();
    const headers = { Accept: "application/json", ...authHeaders() };
    const init = { method, headers };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    if (response.status !== 401) return response;
    // A key entered while this request was out is tried before asking again.
    if (storedKey() === sentKey) {
      await askForKey(
        sentKey ? "That key was not accepted; try another." : "This deployment needs an API key.",
      );
    }
  }
}

// The JSON of an answer, or an error object of the server's shape when it has none.
export async function json(response) {
  try {
    return await response.json();
  } catch {
    return {
      success: false,
      error: { type: "http_error", message: `HTTP ${response.status} with no JSON body` },
    };
  }
}
