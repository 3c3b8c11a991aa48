"""demo/app.py end to end: the page served on localhost, driven in headless Debian Chromium.

Run with ``make test-web`` (installs the ``web`` extra and Debian's chromium package); plain
``pytest`` deselects these tests (marker ``web``, see setup.cfg).
"""
import io
import os.path as osp
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.web

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
# Flags of a headless Chromium on a closed network (no background connections, no sandbox as
# root), as the machine notes prescribe.
CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                 '--disable-background-networking', '--disable-component-update',
                 '--disable-sync']


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture(scope='module')
def server(trained_tiny, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp('web') / 'app.log'
    with open(log, 'w') as out:
        proc = subprocess.Popen(
            [sys.executable, 'demo/app.py', trained_tiny['config'], trained_tiny['checkpoint'],
             '--port', str(port), '--examples',
             osp.join(trained_tiny['data_root'], 'muse_val.json')],
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    url = f'http://127.0.0.1:{port}/'
    deadline = time.time() + 180
    while True:
        assert proc.poll() is None, open(log).read()[-3000:]
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            assert time.time() < deadline, open(log).read()[-3000:]
            time.sleep(1)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope='module')
def page(server):
    from playwright.sync_api import sync_playwright
    chromium = shutil.which('chromium') or '/usr/bin/chromium'
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(server, wait_until='networkidle')
        yield page
        browser.close()


def ask(page, image, question):
    page.locator('#image input[type=file]').set_input_files(image)
    page.locator('#question textarea').fill(question)
    page.locator('#ask').click()


def test_upload_and_ask_shows_the_answer_and_the_masks(trained_tiny, page):
    from pixellm.apis import inference, init_model
    image = osp.join(trained_tiny['data_root'], 'images', 'val_000001.png')
    question = 'Where are the triangles?'
    expected = inference(init_model(trained_tiny['config'], trained_tiny['checkpoint']), image,
                         question)
    ask(page, image, question)
    page.wait_for_function("() => document.querySelector('#answer textarea').value.length > 0",
                           timeout=120000)
    assert page.locator('#answer textarea').input_value() == expected.text
    targets = page.locator('#targets textarea').input_value()
    assert targets.count('\n') + 1 == max(expected.num_targets, 1)
    overlay = page.locator('#overlay img')
    overlay.wait_for(state='visible', timeout=60000)
    size = page.evaluate("() => { const i = document.querySelector('#overlay img');"
                         " return [i.naturalWidth, i.naturalHeight]; }")
    width, height = Image.open(image).size
    assert size[0] == width and size[1] > height  # the image plus the text band
    # The page shows the overlay the API renders.
    src = overlay.get_attribute('src')
    with urllib.request.urlopen(src) as response:
        shown = np.asarray(Image.open(io.BytesIO(response.read())).convert('RGB'))
    assert np.array_equal(shown, np.asarray(expected.overlay()))


def test_examples_from_the_dataset_are_listed(page):
    assert page.get_by_text('Examples').first.is_visible()
    assert page.locator('table tbody tr').count() >= 1


def test_empty_question_shows_an_error_and_the_page_goes_on(trained_tiny, page):
    from pixellm.apis import inference, init_model
    image = osp.join(trained_tiny['data_root'], 'images', 'val_000000.png')
    ask(page, image, '   ')
    page.get_by_text('the question is empty').first.wait_for(timeout=60000)
    # The next question is answered (the page still works): its own answer appears.
    question = 'Where is the green triangle?'
    expected = inference(init_model(trained_tiny['config'], trained_tiny['checkpoint']), image,
                         question).text
    ask(page, image, question)
    page.wait_for_function(
        "(want) => document.querySelector('#answer textarea').value === want", arg=expected,
        timeout=120000)
