from setuptools import find_packages, setup

setup(
    name="streamrec",
    version="0.1.0",
    description=(
        "Record live video sources (RTSP, HLS, RTMP, SRT, HTTP, UDP) and cut MP4 clips"
        " over a JSON HTTP API"
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["streamrec", "streamrec.*"]) + ["twisted.plugins"],
    package_data={
        "streamrec.store": ["schema/*/*.sql"],
        "streamrec.ui": ["*.html", "*.js", "*.css", "*.svg"],
        "twisted": ["plugins/streamrec_plugin.py"],
    },
    install_requires=[
        "twisted>=23.10",
        "klein>=23.5",
        "treq>=23.11",
        "av>=12",
        "pluggy>=1.3",
        "imageio-ffmpeg>=0.5",
        # --database postgresql://...: the shared engine
        "txpostgres>=1.7",
        "psycopg2-binary>=2.9",
        # GET /metrics
        "prometheus-client>=0.20",
        # --signing-key: Ed25519 signed clip manifests, streamrec-verify
        "cryptography>=42",
    ],
    extras_require={
        # kept so "streamrec[postgresql]" still installs; the drivers are core now
        "postgresql": [],
        "test": [
            "numpy",
            "ruff",
            "mypy",
            "mypy-zope",
            "openapi-spec-validator>=0.7",
            "schemathesis>=4.32,<5",
            # the web UI's browser tests (with Debian's chromium)
            "playwright>=1.40",
        ],
    },
    entry_points={
        "console_scripts": [
            "streamrec-token = streamrec.auth:main",
            "streamrec-keygen = streamrec.evidence:keygen_main",
            "streamrec-verify = streamrec.evidence:verify_main",
        ]
    },
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "Topic :: Multimedia :: Video",
    ],
)
