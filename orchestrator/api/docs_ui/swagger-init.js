// Starts Swagger UI on /docs (orchestrator/api/docs_ui): a file, not an inline script, so the
// page's Content-Security-Policy can forbid inline scripts. validatorUrl null: the spec is
// never sent to validator.swagger.io.
"use strict";
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: null,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
  layout: "BaseLayout",
});
