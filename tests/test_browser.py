"""The API as browsers see it: Swagger UI with no internet."""
import re

from .conftest import make_app


def test_the_docs_page_loads_its_scripts_and_styles_from_the_app(tmp_path):
    client = make_app(f"sqlite:///{tmp_path / 'docs.db'}").test_client()
    page = client.get("/api/docs")
    assert page.status_code == 200
    assets = re.findall(r'<(?:script|link)[^>]*(?:src|href)="([^"]+)"', page.text)
    assert len(assets) == 3, page.text  # swagger-ui.css, its standalone preset and its bundle
    for url in assets:
        assert url.startswith("/api/docs/static/"), f"{url} is not served by the app"
        answer = client.get(url)
        assert answer.status_code == 200, url
        assert answer.content_type.startswith(("text/css", "text/javascript")), (url, answer.content_type)
        assert len(answer.data) > 10_000, url


def test_an_unknown_docs_file_is_a_json_404(tmp_path):
    client = make_app(f"sqlite:///{tmp_path / 'docs.db'}").test_client()
    answer = client.get("/api/docs/static/no-such-file.js")
    assert answer.status_code == 404
    assert answer.json["error"] == "not_found"
