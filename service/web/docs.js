// Starts Swagger UI on /docs. It is a file rather than an inline script because the service's
// Content-Security-Policy allows scripts from this origin only.
"use strict";

window.addEventListener("DOMContentLoaded", () => {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    layout: "BaseLayout",
    deepLinking: true,
    showExtensions: true,
    showCommonExtensions: true,
    presets: [SwaggerUIBundle.presets.apis],
    // The default validator badge is an image from another site, which the policy refuses.
    validatorUrl: null,
  });
});
