// Starts Swagger UI on /docs. A file, not an inline script: the docs page's CSP allows only
// this site's own scripts. The spec URL comes from the page (data-spec-url); the online
// validator badge is off (validatorUrl: null): the site has no internet.
(function () {
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.getAttribute("data-spec-url"),
    dom_id: "#swagger-ui",
    layout: "BaseLayout",
    deepLinking: true,
    showExtensions: true,
    showCommonExtensions: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
  });
})();
