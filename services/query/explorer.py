"""`GET /api/docs`: an API explorer (Swagger UI) for the OpenAPI documents, served offline.

Swagger UI comes from the `swagger-ui-bundle-v2` wheel (its files, no CDN). The page lists
both documents: the query service's (/api/openapi.json) and the gateway's
(/api/acp/openapi.json, reached through the same origin). The page is an /api/* route, so
with auth on it is opened as /api/docs?access_token=<token>; the token then goes with the
document requests and "Try it out" calls. The Swagger UI files are public (a published
library), under /api-docs-assets/.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web
from swagger_ui_bundle import swagger_ui_path

from services.common.apidoc import Param, api, undocumented
from services.common.http import error_response

EXPLORER_PATH = "/api/docs"
ASSETS_PATH = "/api-docs-assets"
SWAGGER_UI_DIR = Path(str(swagger_ui_path))
# The only files of the bundle the page loads (no source maps, no oauth2 page).
ASSETS = {
    "swagger-ui.css": "text/css; charset=utf-8",
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui-standalone-preset.js": "text/javascript; charset=utf-8",
    "favicon-32x32.png": "image/png",
}
ASSET_HEADERS = {
    "Cache-Control": "public, max-age=86400",
    "X-Content-Type-Options": "nosniff",
}

PAGE = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Routa session layer: API explorer</title>
<link rel="stylesheet" href="{ASSETS_PATH}/swagger-ui.css">
<link rel="icon" type="image/png" href="{ASSETS_PATH}/favicon-32x32.png">
<style>body {{ margin: 0; background: #fafafa; }}</style>
</head>
<body>
<div id="swagger-ui"></div>
<script src="{ASSETS_PATH}/swagger-ui-bundle.js"></script>
<script src="{ASSETS_PATH}/swagger-ui-standalone-preset.js"></script>
<script>
(function () {{
  var token = new URLSearchParams(window.location.search).get("access_token");
  function withToken(url) {{
    return token ? url + "?access_token=" + encodeURIComponent(token) : url;
  }}
  window.ui = SwaggerUIBundle({{
    urls: [
      {{ url: withToken("/api/openapi.json"), name: "query service (REST)" }},
      {{ url: withToken("/api/acp/openapi.json"), name: "gateway (JSON-RPC over HTTP, SSE)" }}
    ],
    "urls.primaryName": "query service (REST)",
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
    layout: "StandaloneLayout",
    requestInterceptor: function (req) {{
      if (token && !req.headers.Authorization) {{
        req.headers.Authorization = "Bearer " + token;
      }}
      return req;
    }}
  }});
}})();
</script>
</body>
</html>
"""


@api(
    "The API explorer (Swagger UI) of the query service's and the gateway's documents",
    "meta",
    "text/html",
    (),
    (Param("access_token", description="A token, when auth is on"),),
)
async def explorer_page(request: web.Request) -> web.Response:
    return web.Response(
        text=PAGE,
        content_type="text/html",
        charset="utf-8",
        headers={"Cache-Control": "no-cache"},
    )


@undocumented
async def explorer_asset(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    content_type = ASSETS.get(name)
    if content_type is None:
        return error_response(404, f"Unknown asset: {name}")
    return web.FileResponse(
        SWAGGER_UI_DIR / name,
        headers={**ASSET_HEADERS, "Content-Type": content_type},
    )
