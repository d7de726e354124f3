// The API reference: Swagger UI (vendored) over this server's own OpenAPI
// document. Kept in a file so the Content-Security-Policy needs no inline script.
(function () {
  "use strict";
  document.addEventListener("DOMContentLoaded", function () {
    var root = document.getElementById("swagger-ui");
    window.SwaggerUIBundle({
      url: root.dataset.specUrl,
      domNode: root,
      deepLinking: true,
      validatorUrl: null,
      tryItOutEnabled: false
    });
  });
})();
