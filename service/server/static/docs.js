// Interactive API docs: Swagger UI (served by the app, never from a CDN) over
// /openapi.json. The document needs the key when auth is on, so it is fetched here,
// asking for the key on a 401, and the key is handed to Swagger UI's "Authorize".

import { api, json, storedKey } from "./api.js";

async function start() {
  const response = await api("openapi.json");
  const spec = await json(response);
  if (!response.ok) {
    document.getElementById("swagger-ui").textContent =
      `GET /openapi.json answered ${response.status}: ${spec.error?.message || ""}`;
    return;
  }
  // Requests go to where the page was served from, also behind a path prefix.
  spec.servers = [{ url: new URL(".", window.location.href).href.replace(/\/$/, "") }];
  const ui = window.SwaggerUIBundle({
    spec,
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [window.SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    // The default validator badge is an image from swagger.io: nothing leaves this server.
    validatorUrl: null,
    // No persistAuthorization: it would keep the key in localStorage, past the session.
    persistAuthorization: false,
    onComplete: () => {
      const key = storedKey();
      if (key) ui.preauthorizeApiKey("bearerAuth", key);
      document.body.dataset.loaded = "true";
    },
  });
}

start();
