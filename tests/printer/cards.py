"""The test card every printer test prints: one Vietnamese applicant (diacritics in every
field), a drawn portrait and two noise prints, issued on a fixed day."""
from __future__ import annotations

from datetime import date

import cv2
import numpy as np

from station.card import CardData, card_data

AUTHORITY = "CỤC TRƯỞNG CỤC CẢNH SÁT QUẢN LÝ HÀNH CHÍNH VỀ TRẬT TỰ XÃ HỘI"
ISSUED = date(2024, 7, 1)
APPLICANT = {
    "full_name": "Nguyễn Thị Đào",
    "date_of_birth": "1985-03-04",
    "sex": "F",
    "nationality": "VNM",
    "id_number": "031185001234",
    "old_id_number": "123456789",
    "place_of_origin": "Xã Nghĩa Hưng, Huyện Nghĩa Hưng, Nam Định",
    "place_of_residence": "Số 12, ngõ 34 phố Lạch Tray, Phường Lạch Tray, Quận Ngô Quyền, Hải Phòng",
    "ethnicity": "Kinh",
    "religion": "Không",
    "identifying_marks": "Nốt ruồi C:2cm trên sau đầu lông mày trái",
}


def portrait() -> bytes:
    image = np.zeros((400, 300, 3), np.uint8)
    cv2.circle(image, (150, 170), 90, (120, 160, 210), -1)
    return cv2.imencode(".jpg", image)[1].tobytes()


def finger(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (288, 256), dtype=np.uint8)


def make_card(applicant: dict | None = None, issued: date = ISSUED) -> CardData:
    return card_data(applicant or APPLICANT, portrait(), finger(1), finger(2), issued, AUTHORITY)
